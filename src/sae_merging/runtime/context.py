"""The shared run types: what every merging method sees (`RunContext`), the individuals it
keeps (`Member`, `PopulationState`), the samples it scores on (`Sample`), what it asks the loop
for (`Ask`, `Candidate`), what the loop tells it back (`Told`) and what a run chooses
(`Outcome`). They live below the methods so that the runner and the loop, which drive methods,
do not import a method's module to get them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sae_merging.models.io import Checkpoint, parse_dtype
from sae_merging.models.pool import ModelPool
from sae_merging.runtime.fitness import FitnessEvaluator, Scores
from sae_merging.runtime.store import IndividualStore
from sae_merging.tasks.base import Example, TaskData
from sae_merging.tasks.pool import TaskPool
from sae_merging.utils.files import stable_hash
from sae_merging.utils.tensorfiles import LazyTensors
from sae_merging.utils.timing import Timer

Sample = dict[str, tuple[TaskData, Sequence[Example]]]


@dataclass
class Member:
    """An individual of an archive or swarm: its weights live in the store under `ident`."""

    ident: str
    origin: str
    generation: int = 0
    rate: float = 0.0
    sparsity: float = 0.0
    parents: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Member:
        return cls(**data)


@dataclass
class PopulationState:
    """A method's state: what the checkpoint holds (`to_json`), written after every finished
    generation (-1: none yet). `members` are the individuals it keeps (the loop deletes the
    others' files); `metrics` is the finished generation's line of metrics.jsonl; `pending`
    holds what a generation's rounds pass on to each other (never checkpointed: a generation
    is resumed from its start)."""

    generation: int = -1
    members: list[Member] = field(default_factory=list)
    next_id: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict, repr=False)

    def new_member(self, origin: str, generation: int, **fields: Any) -> Member:
        """A member with the next free id `gGGG-NNNN` (not yet made: see `Candidate`)."""
        member = Member(f"g{generation:03d}-{self.next_id:04d}", origin, generation, **fields)
        self.next_id += 1
        return member

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "members": [m.to_json() for m in self.members],
            "next_id": self.next_id,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PopulationState:
        members = [Member.from_json(m) for m in data["members"]]
        return cls(data["generation"], members, data["next_id"], data["metrics"])


Recipe = Callable[[], Mapping[str, torch.Tensor]]


@dataclass
class Candidate:
    """A new individual a method asks for: `member` names it (id, origin, parents), `make`
    builds its tensors, called by the loop only once it knows it can afford scoring them (it
    may fill the member's measured fields, e.g. its sparsity). `scored=False`: stored only,
    never scored (a PSO velocity)."""

    member: Member
    make: Recipe
    scored: bool = True


@dataclass
class Ask:
    """One round of a generation: score the stored individuals `again` on `sample`, then make,
    store and score each of `new`, in order. `note`: what the method needs back in `tell`."""

    sample: Sample
    new: list[Candidate] = field(default_factory=list)
    again: list[Member] = field(default_factory=list)
    note: Any = None


@dataclass
class Told:
    """The loop's answer to an `Ask`: the scores of every individual it scored (by id), and the
    candidates it made: all of them, or a prefix of them when the budget ran out."""

    scores: dict[str, Scores]
    made: list[Member]

    def __getitem__(self, member: Member) -> Scores:
        return self.scores[member.ident]


@dataclass
class Outcome:
    """What a method returns: the chosen individual and its scores on the data it was chosen
    by (`selection=`; their mean is the run's objective), and how many examples that choice
    scored beyond the search."""

    member: Member
    opt_scores: Scores
    details: dict[str, Any] = field(default_factory=dict)
    selection_examples: int = 0


@dataclass
class RunContext:
    models: ModelPool
    tasks: TaskPool
    fitness: FitnessEvaluator
    store: IndividualStore
    run_dir: Path
    seed: int
    selection: str  # how the final model is chosen (runtime.selection; the default: RunSettings)
    timer: Timer = field(default_factory=Timer)
    progress: bool = True

    def rng(self, *purpose: object) -> random.Random:
        """A generator determined by the seed and `purpose` only (e.g. ("pairs", generation)):
        nothing to checkpoint, and a resumed run draws exactly what an uninterrupted one does."""
        return random.Random(int(stable_hash([self.seed, *purpose]), 16))

    def torch_generator(self, *purpose: object) -> torch.Generator:
        return torch.Generator().manual_seed(int(stable_hash([self.seed, *purpose]), 16) % 2**63)

    @property
    def device(self) -> torch.device:
        """The run's device (`device=`): where individuals are scored and children are made."""
        return self.fitness.device

    @property
    def dtype(self) -> torch.dtype:
        return parse_dtype(self.models.dtype)

    @cached_property
    def _checkpoints(self) -> dict[str, Checkpoint]:
        names = [f"expert:{n}" for n in self.models.expert_names]
        refs = dict(zip(names, self.models.expert_refs, strict=True))
        if self.models.base_ref is not None:
            refs["base"] = self.models.base_ref
        return {key: Checkpoint(ref) for key, ref in refs.items()}

    def merge_names(self) -> list[str]:
        """The tensors every method merges (reference model order, tied aliases left out)."""
        return list(self.models.compatibility.shapes)

    def load_expert(self, index: int) -> dict[str, torch.Tensor]:
        return dict(self.expert_tensors(index).items())

    def expert_tensors(self, index: int) -> LazyTensors:
        """Expert `index`'s merge tensors, each read when accessed (nothing is kept)."""
        return self._lazy(f"expert:{self.models.expert_names[index]}")

    def expert_nbytes(self) -> int:
        """The bytes of one model's merge tensors in the run's dtype."""
        rows = self.models.compatibility.common_rows
        item = torch.empty((), dtype=self.dtype).element_size()
        shapes = self.models.compatibility.shapes
        return sum(math.prod((rows[n], *s[1:]) if n in rows else s) * item for n, s in shapes.items())

    def load_base(self, method: str) -> dict[str, torch.Tensor]:
        return dict(self.base_tensors(method).items())

    def base_tensors(self, method: str) -> LazyTensors:
        """The base's merge tensors, each read when accessed (`method` names who needs it)."""
        self.models.require_base(method)
        return self._lazy("base")

    def _lazy(self, key: str) -> LazyTensors:
        checkpoint = self._checkpoints[key]
        rows = self.models.compatibility.common_rows

        def read(name: str) -> torch.Tensor:
            tensor = checkpoint.get(name).to(self.dtype)
            return tensor[: rows[name]] if name in rows else tensor

        return LazyTensors(self.merge_names(), read)

    def complete_vocab(self, tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Merged tensors at the reference model's full shape: under vocab_policy=common_rows the
        rows beyond the shared vocabulary come from the reference (the base, else expert 0)."""
        rows = self.models.compatibility.common_rows
        if not rows:
            return tensors
        key = "base" if self.models.base_ref is not None else f"expert:{self.models.expert_names[0]}"
        full = dict(tensors)
        for name, count in rows.items():
            tensor = self._checkpoints[key].get(name).to(tensors[name].dtype).clone()
            tensor[:count] = tensors[name]
            full[name] = tensor
        return full

    def sample(self, draw: int) -> Sample:
        """The optimization sample of draw number `draw` for every task."""
        return {t.name: (t, self.tasks.opt_sample(t, self.seed, draw)) for t in self.tasks.tasks}

    def generation_sample(self, generation: int, redraw: bool) -> Sample:
        """The optimization sample generation t scores on: a fresh draw per generation
        (`redraw`), or always the first (one fixed set)."""
        return self.sample(generation if redraw else 0)

    def score(self, member: Member, sample: Sample) -> Scores:
        with self.timer.section("evaluate"):
            return self.fitness.score(member.ident, lambda: self.store.open(member.ident), sample)
