"""The model pool's settings (`model=`), checked before anything heavy is imported.

`ModelPool` derives from `ModelPoolSettings` (its arguments are these fields); `problems()`
checks what can be checked from the file system alone (see `sae_merging.models.files`): the
counts, every local path, the weights' headers and the tokenizer of the model the run takes its
tokenizer from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sae_merging.models.files import model_problems
from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

DTYPE_NAMES = ("float32", "bfloat16", "float16")
VOCAB_POLICIES = ("refuse", "common_rows")


@dataclass(eq=False)
class ModelPoolSettings(Settings):
    experts: Sequence[str] = field(default_factory=list)
    base: str | None = None
    expert_names: Sequence[str] | None = None
    dtype: str = "float32"
    vocab_policy: str = "refuse"

    def __post_init__(self) -> None:
        self.experts = [str(e) for e in (self.experts or [])]
        check.text("base", self.base, optional=True)
        if self.expert_names and len(self.expert_names) != len(self.experts):
            raise check.SettingError(
                "expert_names", list(self.expert_names), f"needs one name per expert ({len(self.experts)})"
            )
        # the experts' names: given, or their folder names
        self.expert_names = list(self.expert_names or [Path(e).name or e for e in self.experts])
        check.choice("dtype", self.dtype, DTYPE_NAMES)
        check.choice("vocab_policy", self.vocab_policy, VOCAB_POLICIES)

    @property
    def has_base(self) -> bool:
        """Known without resolving anything (a lab pool always has its base)."""
        return bool(self.base)

    def problems(self) -> list[str]:
        """Problems found without loading anything (counts, local paths, headers, tokenizer)."""
        found = []
        if len(self.experts) < 2:
            found.append(f"model.experts needs at least 2 models, got {len(self.experts)}")
        specs = [("model.base", self.base)] + [(f"model.experts[{i}]", e) for i, e in enumerate(self.experts)]
        specs = [(key, spec) for key, spec in specs if spec is not None]
        for index, (key, spec) in enumerate(specs):
            found += model_problems(key, spec, need_tokenizer=index == 0)
        return found
