"""Model pools: the experts to merge and, for methods that need it, their base.

`ModelPool` takes any models by path or hub id (`model=hf`) and checks their compatibility
from headers before anything is loaded. The lab's pool (`model=lab`) is
`sae_merging.lab.pools.LabModelPool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from sae_merging.models.compat import Compatibility, check_compatible
from sae_merging.models.io import ModelRef, looks_like_path


class ModelPool:
    """Experts (and an optional base) named by local path, `.gguf` file or hub id."""

    def __init__(
        self,
        experts: Sequence[str],
        base: str | None = None,
        expert_names: Sequence[str] | None = None,
        dtype: str = "float32",
        vocab_policy: str = "refuse",
    ) -> None:
        self._experts = list(experts or [])
        self._base = base
        self._names = list(expert_names) if expert_names else None
        self.dtype = dtype
        self.vocab_policy = vocab_policy

    def problems(self) -> list[str]:
        """Config problems found without loading anything (missing local paths, bad counts)."""
        found = []
        if len(self._experts) < 2:
            found.append(f"model.experts needs at least 2 models, got {len(self._experts)}")
        if self._names is not None and len(self._names) != len(self._experts):
            found.append(f"model.expert_names has {len(self._names)} names for {len(self._experts)} experts")
        for key, spec in [("model.base", self._base)] + [
            (f"model.experts[{i}]", e) for i, e in enumerate(self._experts)
        ]:
            if spec is None:
                continue
            path = Path(str(spec)).expanduser()
            if looks_like_path(str(spec)) and not path.exists():
                found.append(
                    f"{key}={spec!r}: no such file or folder (a local path or a hub id 'owner/name')"
                )
        return found

    @property
    def base(self) -> ModelRef | None:
        return ModelRef.parse(self._base) if self._base else None

    @property
    def has_base(self) -> bool:
        """Known without resolving anything (a lab pool always has its base)."""
        return bool(self._base)

    @property
    def experts(self) -> list[ModelRef]:
        return [ModelRef.parse(e) for e in self._experts]

    @property
    def expert_names(self) -> list[str]:
        if self._names:
            return list(self._names)
        return [Path(str(ref)).name or str(ref) for ref in self.experts]

    def require_base(self, method: str) -> ModelRef:
        if self.base is None:
            raise ValueError(f"method {method!r} needs a base model: set model.base=PATH_OR_ID")
        return self.base

    @cached_property
    def compatibility(self) -> Compatibility:
        """Checked once; the reference (first) model is the base when there is one."""
        refs = ([self.base] if self.base else []) + self.experts
        labels = (["base"] if self.base else []) + self.expert_names
        return check_compatible(refs, labels, self.vocab_policy)
