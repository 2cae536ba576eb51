"""The evaluators' settings (`evaluator=`, `final_evaluator=`), checked before anything heavy is
imported (the backends import torch, transformers, lm-eval or vLLM)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sae_merging.tasks.extraction import EXTRACTIONS
from sae_merging.utils import settings as check
from sae_merging.utils.settings import Settings

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(eq=False)
class EvaluatorSettings(Settings):
    """What every backend takes."""

    batch_size: int = 64
    extraction: str = "strict"
    max_length: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        check.integer("batch_size", self.batch_size, 1)
        check.choice("extraction", self.extraction, EXTRACTIONS)
        check.integer("max_length", self.max_length, 1, optional=True)
        check.flag("progress", self.progress)


@dataclass(eq=False)
class BuiltinSettings(EvaluatorSettings):
    """`token_budget`: padded tokens per forward pass; `min_shared_prefix`: the tokens a batch's
    prompts must share for that prefix to run once; `prefill_tokens`: padded tokens per pass
    over prompts (see evaluation/builtin.py)."""

    token_budget: int = 8192
    min_shared_prefix: int = 16
    prefill_tokens: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check.integer("token_budget", self.token_budget, 1)
        check.integer("min_shared_prefix", self.min_shared_prefix, 1)
        check.integer("prefill_tokens", self.prefill_tokens, 1, optional=True)


@dataclass(eq=False)
class LmEvalSettings(EvaluatorSettings):
    registered: Mapping[str, str] = field(default_factory=dict)
    num_fewshot: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.registered = dict(self.registered or {})
        check.integer("num_fewshot", self.num_fewshot, 0, optional=True)


@dataclass(eq=False)
class VllmSettings(EvaluatorSettings):
    gpu_memory_utilization: float = 0.5
    dtype: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check.number("gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, low_open=True)
        check.choice("dtype", self.dtype, VLLM_DTYPES)

    needs_cuda = True
