"""What a lab build is made of (`lab=`): sizes, data counts, training settings, as frozen
dataclasses in a module that imports nothing heavy, so a bad `lab.*` setting is refused before
torch is imported (`LabSpec.from_dict` refuses unknown keys and checks every number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from sae_merging.lab import math_problems, multilingual
from sae_merging.utils import settings as check
from sae_merging.utils.files import stable_hash

LAB_FORMAT = 3  # bump when a change to this module changes what a build contains (3: reference rows)
MATH_TASK, MULTILINGUAL_TASK = "lab-math", "lab-multilingual"
EXPERTS = ("math", "multilingual")


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check.integer("steps", self.steps, 1)
        check.integer("batch_size", self.batch_size, 1)
        check.number("lr", self.lr, 0, low_open=True)
        check.integer("warmup", self.warmup, 0)
        check.number("weight_decay", self.weight_decay, 0)


@dataclass(frozen=True)
class LabModelSpec:
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check.integer(name, value, 1)


@dataclass(frozen=True)
class BaseDataSpec:
    """How many examples of each kind the base is trained on (loss on every token)."""

    math_one_step: int = 10000
    math_multi_step: int = 2000
    multilingual_english: int = 10000
    multilingual_unanswered: int = 5000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check.integer(name, value, 0)


# LabSpec.expert_split's values; the first is left out of the cache keys (keys from before the knob)
EXPERT_SPLITS = ("entries", "layers", "layers_reversed")

# the experts' learning rates of lab=default, the interference dial's middle (the frontier's best
# point, docs/lab.md; high_interference: 5e-4 both, low_interference: 1.5e-4 both)
MATH_EXPERT_LR, MULTILINGUAL_EXPERT_LR = 1.5e-3, 7e-4


@dataclass(frozen=True)
class ExpertSpec:
    """`n_train` task examples plus a `replay` share of the base's answered data (as instruction
    tuning mixes in general data), which keeps the experts from forgetting what the base knew."""

    n_train: int = 20000
    replay: float = 0.3
    train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=400, lr=MATH_EXPERT_LR, warmup=20))

    def __post_init__(self) -> None:
        check.integer("n_train", self.n_train, 1)
        check.rate("replay", self.replay)


LAMBDA_GRID = tuple(round(0.1 * i, 1) for i in range(2, 13))  # 0.2, 0.3, ..., 1.2


@dataclass(frozen=True)
class ReferenceSpec:
    """How the build's reference rows are made: task arithmetic's lambda is the grid value with
    the best mean accuracy on the validation split (`validation_share` of each task's opt pool,
    held out as `task=lab`'s `validation_size` holds it out for the run seed `lab.seed`)."""

    lambdas: tuple[float, ...] = LAMBDA_GRID
    validation_share: float = 0.25

    def __post_init__(self) -> None:
        check.numbers("lambdas", self.lambdas, 0, nonempty=True)
        check.number("validation_share", self.validation_share, 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class LabSpec:
    name: str = "default"
    seed: int = 0
    threads: int = 1  # torch threads of the build: float sums (hence weights) depend on it
    model: LabModelSpec = field(default_factory=LabModelSpec)
    math: math_problems.MathSpec = field(default_factory=math_problems.MathSpec)
    multilingual: multilingual.MultilingualSpec = field(default_factory=multilingual.MultilingualSpec)
    base_data: BaseDataSpec = field(default_factory=BaseDataSpec)
    base_train: TrainSpec = field(default_factory=lambda: TrainSpec(steps=1500, lr=3e-3))
    math_expert: ExpertSpec = field(default_factory=ExpertSpec)
    multilingual_expert: ExpertSpec = field(
        default_factory=lambda: ExpertSpec(train=TrainSpec(steps=800, lr=MULTILINGUAL_EXPERT_LR, warmup=20))
    )

    @classmethod
    def from_dict(cls, data: Mapping) -> LabSpec:
        """Build from a plain mapping (a Hydra `lab` node), refusing unknown keys."""
        return _from_dict(cls, dict(data))

    # share of each weight's entries that both experts fine-tune; the rest is split between
    # them by `expert_split` (each expert's other entries stay at the base's values). 1: both train every
    # weight; 0: their task vectors touch disjoint entries. The multi-task model trains all.
    expert_overlap: float = 0.0
    # how the entries that are not shared are split between the experts: "entries" (at random)
    # or "layers" (the math expert trains the first half of the decoder layers, the
    # multilingual expert the second half; "layers_reversed": the other way round; weights outside
    # the decoder layers, the embeddings and
    # the final norm, are trained only in their shared share): task vectors disjoint in structure
    expert_split: str = "layers_reversed"
    # the multi-task model (the ceiling): every weight trained on both experts' data for as many
    # steps as the two experts together, with the math expert's batch and warmup at this lr
    # (its own, so that presets whose experts differ in lr share one ceiling)
    multitask_lr: float = 5e-4
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)

    def __post_init__(self) -> None:
        check.integer("seed", self.seed, 0)
        check.integer("threads", self.threads, 1)
        check.number("expert_overlap", self.expert_overlap, 0, 1)
        check.choice("expert_split", self.expert_split, EXPERT_SPLITS)
        check.number("multitask_lr", self.multitask_lr, 0, low_open=True)

    def multitask_train(self) -> TrainSpec:
        """The multi-task model's recipe (see `multitask_lr`)."""
        steps = self.math_expert.train.steps + self.multilingual_expert.train.steps
        return replace(self.math_expert.train, steps=steps, lr=self.multitask_lr)

    def _split(self) -> dict:
        """`expert_split` for the hashes, left out when "entries" so that the keys of specs
        written before it existed stay unchanged."""
        return {} if self.expert_split == EXPERT_SPLITS[0] else {"split": self.expert_split}

    def key(self) -> str:
        spec = asdict(self)
        if not self._split():
            del spec["expert_split"]
        return stable_hash({"format": LAB_FORMAT, "spec": spec})

    def stage_keys(self) -> dict[str, str]:
        """A key per trained model, hashing only what that model depends on, so builds that
        differ in the experts' recipe share the base (and presets share what they can)."""
        base = stable_hash(
            {
                "format": LAB_FORMAT,
                **{k: asdict(self)[k] for k in ("seed", "threads", "model", "math", "multilingual")},
                "base_data": asdict(self.base_data),
                "base_train": asdict(self.base_train),
            }
        )
        experts = {"math": asdict(self.math_expert), "multilingual": asdict(self.multilingual_expert)}
        keys = {"base": base}
        for name, expert in experts.items():
            keys[name] = stable_hash(
                {"base": base, "name": name, "expert": expert, "overlap": self.expert_overlap} | self._split()
            )
        data = {name: {k: e[k] for k in ("n_train", "replay")} for name, e in experts.items()}
        recipe = asdict(self.multitask_train())
        keys["multitask"] = stable_hash({"base": base, "name": "multitask", "data": data, "train": recipe})
        return keys


def _from_dict(cls: type, data: dict):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - {"cache_dir", "_target_"})
    if unknown:
        raise check.SettingError(unknown[0], data[unknown[0]], f"unknown setting; valid: {', '.join(known)}")
    values = {}
    for name, value in data.items():
        if name not in known:
            continue
        default = (
            known[name].default_factory() if callable(known[name].default_factory) else known[name].default
        )
        if is_dataclass(default) and isinstance(value, Mapping):
            try:
                value = _from_dict(type(default), dict(value))
            except check.SettingError as error:
                raise check.SettingError(f"{name}.{error.key}", error.value, error.allowed) from None
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:  # a required setting left out
        raise check.SettingError("", data, f"incomplete settings for {cls.__name__} ({error})") from None
