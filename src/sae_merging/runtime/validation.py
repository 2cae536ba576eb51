"""Config validation, run before anything heavy is loaded.

Each problem is one line naming the key, the value and what is allowed; `run.py` prints them
and exits with status 2, without a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sae_merging.models.compat import VOCAB_POLICIES
from sae_merging.models.io import DTYPES
from sae_merging.pruning.magnitude import GRANULARITIES
from sae_merging.runtime.selection import SELECTIONS
from sae_merging.schedules.cyclic import RISES
from sae_merging.tasks.extraction import EXTRACTIONS


class ConfigError(ValueError):
    """One or more invalid settings; `problems` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


class _Checks:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def rule(self, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
        if OmegaConf.select(self.cfg, key, default="__absent__") == "__absent__":
            return
        value = _get(self.cfg, key)
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            self.problems.append(f"{key}={value!r}: {allowed}")

    def choice(self, key: str, options) -> None:
        self.rule(key, lambda v: v in options, f"must be one of {', '.join(map(str, options))}")

    def integer(self, key: str, minimum: int) -> None:
        self.rule(
            key,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"must be an integer >= {minimum}",
        )

    def rate(self, key: str) -> None:
        self.rule(key, lambda v: isinstance(v, int | float) and 0 <= v < 1, "must be a rate in [0, 1)")


def _target_name(cfg: DictConfig, key: str) -> str:
    return str(_get(cfg, f"{key}._target_") or "").rsplit(".", 1)[-1]


def config_problems(cfg: DictConfig) -> list[str]:
    """Every invalid setting of a composed run config (empty when all is well)."""
    checks = _Checks(cfg)
    checks.integer("seed", 0)
    checks.choice("selection", SELECTIONS)
    if _get(cfg, "budget.examples") is not None:
        checks.integer("budget.examples", 1)
    if _get(cfg, "threads") is not None:
        checks.integer("threads", 1)
    checks.rule(
        "device",
        lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) is not None,
        "auto, cpu, cuda, cuda:N or mps",
    )
    if _target_name(cfg, "schedule") == "CyclicSchedule":
        checks.rate("schedule.s_min")
        checks.rate("schedule.s_max")
        s_min, s_max = _get(cfg, "schedule.s_min"), _get(cfg, "schedule.s_max")
        if isinstance(s_min, int | float) and isinstance(s_max, int | float) and s_min > s_max:
            checks.problems.append(f"schedule.s_min={s_min!r}: must be <= schedule.s_max ({s_max!r})")
        checks.integer("schedule.T0", 1)
        checks.integer("schedule.T_mult", 1)
        checks.choice("schedule.rise", RISES)
    if _target_name(cfg, "schedule") == "ConstantSchedule":
        checks.rate("schedule.rate_value")
    checks.integer("schedule.steps", 1)
    checks.choice("pruner.granularity", GRANULARITIES)
    checks.choice("scoring.granularity", ("global", "local"))
    checks.integer("method.archive_size", 2)
    checks.integer("method.n_sparse_variants", 0)
    checks.rule("method.sparsity_weight", lambda v: v >= 0, "must be >= 0")
    checks.choice("method.redense", ("parents", "original_dense"))
    checks.choice("method.competition", ("worst", "shared"))
    checks.rule("method.sharing_alpha", lambda v: v >= 0, "must be >= 0")
    checks.choice("model.dtype", tuple(DTYPES))
    checks.choice("model.vocab_policy", VOCAB_POLICIES)
    checks.choice("evaluator.extraction", EXTRACTIONS)
    checks.integer("evaluator.batch_size", 1)
    return checks.problems


def pool_problems(models, tasks, method) -> list[str]:
    """Problems visible once the pools and the method exist (no weights or data loaded yet)."""
    problems = models.problems() + tasks.problems()
    if not problems and hasattr(method, "problems"):
        problems += method.problems(models)
    return problems


def instantiate_checked(node: DictConfig, key: str):
    """`hydra.utils.instantiate`, turning a constructor's ValueError (a bad setting) into a
    ConfigError line instead of a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__
        if not isinstance(cause, ValueError):
            raise
        message = str(cause)
        raise ConfigError([message if message.startswith(key) else f"{key}: {message}"]) from error
