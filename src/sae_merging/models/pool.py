"""Model pools: the experts to merge and, for methods that need it, their base.

`ModelPool` takes any models by path or hub id (`model=hf`) and checks their compatibility
from headers before anything is loaded. The lab's pool (`model=lab`) is
`sae_merging.lab.pools.LabModelPool`.
"""

from __future__ import annotations

from functools import cached_property

from sae_merging.models.compat import Compatibility, check_compatible
from sae_merging.models.io import ModelRef
from sae_merging.models.settings import ModelPoolSettings


class ModelPoolBase:
    """What every model pool offers once its settings are checked: where each model is read
    from (`base_ref`, `expert_refs`, parsed from `base` and `experts`) and whether they are
    compatible. A pool derives from this and from its settings (`ModelPool`, `LabModelPool`)."""

    base: str | None
    experts: list[str]
    expert_names: list[str]
    vocab_policy: str

    @property
    def base_ref(self) -> ModelRef | None:
        return ModelRef.parse(self.base) if self.base else None

    @property
    def expert_refs(self) -> list[ModelRef]:
        return [ModelRef.parse(e) for e in self.experts]

    def require_base(self, method: str) -> ModelRef:
        if self.base_ref is None:
            raise ValueError(f"method {method!r} needs a base model: set model.base=PATH_OR_ID")
        return self.base_ref

    @cached_property
    def compatibility(self) -> Compatibility:
        """Checked once; the reference (first) model is the base when there is one."""
        refs = ([self.base_ref] if self.base else []) + self.expert_refs
        labels = (["base"] if self.base else []) + list(self.expert_names)
        return check_compatible(refs, labels, self.vocab_policy)


class ModelPool(ModelPoolBase, ModelPoolSettings):
    """Experts (and an optional base) named by local path, `.gguf` file or hub id; the
    arguments are `ModelPoolSettings` (checked there, with `problems()` for the files)."""
