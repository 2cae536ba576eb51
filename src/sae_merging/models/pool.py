"""Model pools: the experts to merge and, for methods that need it, their base.

`ModelPool` takes any models by path or hub id (`model=hf`) and checks their compatibility
from headers before anything is loaded. The lab's pool (`model=lab`) is
`sae_merging.lab.pools.LabModelPool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from sae_merging.models.compat import Compatibility, check_compatible
from sae_merging.models.io import ModelRef
from sae_merging.models.settings import ModelPoolSettings


class ModelPool:
    """Experts (and an optional base) named by local path, `.gguf` file or hub id; the
    arguments are checked by `ModelPoolSettings` (`settings`)."""

    def __init__(
        self,
        experts: Sequence[str],
        base: str | None = None,
        expert_names: Sequence[str] | None = None,
        dtype: str = "float32",
        vocab_policy: str = "refuse",
    ) -> None:
        self.settings = ModelPoolSettings(experts, base, expert_names, dtype, vocab_policy)
        self.dtype = dtype
        self.vocab_policy = vocab_policy

    def problems(self) -> list[str]:
        """Problems found without loading anything (see `ModelPoolSettings.problems`)."""
        return self.settings.problems()

    @property
    def base(self) -> ModelRef | None:
        return ModelRef.parse(self.settings.base) if self.settings.base else None

    @property
    def has_base(self) -> bool:
        """Known without resolving anything (a lab pool always has its base)."""
        return self.settings.has_base

    @property
    def experts(self) -> list[ModelRef]:
        return [ModelRef.parse(e) for e in self.settings.experts]

    @property
    def expert_names(self) -> list[str]:
        return list(self.settings.expert_names)

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
