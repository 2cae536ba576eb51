"""PSO-Merging (Zhang, Zhang & Feng 2025, arXiv 2508.19839): particle swarm search over whole models.

The swarm starts as the base (`include_base`), the experts and one DARE-sparsified copy of
each expert (`dare_drop` of its task vector dropped, the rest rescaled; seeded per tensor).
`swarm_size` (the population size of the paper's Table 3) changes the number of DARE copies:
they cycle over the experts, each copy with its own seed.
Each step moves every particle with the standard update

    v <- w v + c1 r1 (pbest - x) + c2 r2 (gbest - x),    x <- x + v

(w = `inertia`), scores the new positions on the optimization sample (fitness = mean task
score; a fixed draw by default, as PSO-Merging optimizes on one fixed set; `redraw_opt` re-draws
every step and re-scores the personal bests on it), updates the personal bests, and after the
whole swarm has moved, the global best (synchronous PSO: every particle of a step follows the
same gbest). The result is the final global best.

Choices the paper leaves open, each an option:
- `init_velocity`: `zero` (default; the common modern choice, so step 1 is pure attraction to
  pbest/gbest) or `random`: u * (x_j - x) toward another particle j, with u ~ U(0, 1) and j
  drawn per particle (seeded).
- `random_scope`: what r1, r2 ~ U(0, 1) are drawn for: `per_element` (default: standard PSO
  draws them per dimension, which lets a step mix each coordinate differently),
  `per_tensor` or `per_particle` (one pair for the whole model: every tensor moves by the
  same combination of v, pbest - x and gbest - x).
- `clamp`: null (default, no limit; w = 0.2 already damps the velocity) or a number c: every
  element is clipped to |v| <= c * (RMS of the experts' task vectors in that tensor), the
  natural scale of the search space, since every initial particle is the base plus a
  (sparsified) task vector.
- Ties keep the incumbent: a personal or global best is only replaced by a strictly better one.

Memory, in models' worth (one model = all merged tensors in the models' dtype):
- on disk: P positions, P velocities and the personal bests; a personal best is one of the
  particle's past positions, stored once and shared with the current position when equal, so a
  run holds at most 3P models after each checkpoint and at most 5P while a step runs (the
  previous positions and velocities are deleted only once the next checkpoint no longer needs
  them). With the base, 2 experts and their 2 DARE copies P = 5: up to 15 models (25 during a
  step); a zero velocity is stored packed (a bitmask), so `init_velocity: zero` costs ~nothing.
- in memory during a step: the moving particle's x, v and pbest plus the global best = 4
  models (x and v are updated tensor by tensor in place), besides the evaluator's own model;
  during initialization 3 (base, one expert, its DARE copy).
Positions and velocities are kept in the models' dtype (the update is computed per tensor in
float32); in bfloat16 a step smaller than ~0.4% of a weight rounds away.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sae_merging.merging import functions as merge_fns
from sae_merging.methods.archive import RESCORED
from sae_merging.methods.base import Strategy
from sae_merging.methods.settings import PSOSettings
from sae_merging.runtime.context import Ask, Candidate, Member, RunContext, Sample, Told

# the notes of generation 0's two rounds and of a step's re-scoring round
POSITIONS, VELOCITIES = "positions", "velocities"

Coefficient = float | torch.Tensor


def pso_update(
    x: torch.Tensor,
    v: torch.Tensor,
    personal: torch.Tensor,
    best: torch.Tensor,
    inertia: float,
    c1: float,
    c2: float,
    r1: Coefficient,
    r2: Coefficient,
    limit: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PSO move of one tensor: v' = w v + c1 r1 (pbest - x) + c2 r2 (gbest - x), clipped to
    |v'| <= limit when given, and x' = x + v'. Float32 arithmetic; both in x's dtype."""
    x32 = x.to(torch.float32)
    velocity = (
        inertia * v.to(torch.float32)
        + c1 * r1 * (personal.to(torch.float32) - x32)
        + c2 * r2 * (best.to(torch.float32) - x32)
    )
    if limit is not None:
        velocity = velocity.clamp(-limit, limit)
    return (x32 + velocity).to(x.dtype), velocity.to(x.dtype)


@dataclass
class Particle:
    position: Member
    velocity: Member
    best: Member
    best_score: float
    best_accuracy: dict[str, float]

    def to_json(self) -> dict:
        return {
            "position": self.position.to_json(),
            "velocity": self.velocity.to_json(),
            "best": self.best.to_json(),
            "best_score": self.best_score,
            "best_accuracy": self.best_accuracy,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Particle:
        return cls(
            Member.from_json(data["position"]),
            Member.from_json(data["velocity"]),
            Member.from_json(data["best"]),
            data["best_score"],
            dict(data["best_accuracy"]),
        )


@dataclass
class PSOState:
    generation: int = -1
    particles: list[Particle] = field(default_factory=list)
    leader: int = 0  # the particle whose personal best is the global best
    limits: dict[str, float] = field(default_factory=dict)  # |v| bound per tensor (`clamp`)
    metrics: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict, repr=False)  # within a generation

    @property
    def members(self) -> list[Member]:
        """Every stored individual the state refers to (the loop keeps exactly these on resume)."""
        found: dict[str, Member] = {}
        for p in self.particles:
            for member in (p.position, p.velocity, p.best):
                found.setdefault(member.ident, member)
        return list(found.values())

    @property
    def global_best(self) -> Particle:
        return self.particles[self.leader]

    def to_json(self) -> dict:
        return {
            "generation": self.generation,
            "particles": [p.to_json() for p in self.particles],
            "leader": self.leader,
            "limits": self.limits,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PSOState:
        particles = [Particle.from_json(p) for p in data["particles"]]
        return cls(data["generation"], particles, data["leader"], dict(data["limits"]), data["metrics"])


class PSO(PSOSettings, Strategy):
    """See the module docstring. Parameters mirror `conf/method/pso.yaml` (checked by
    `PSOSettings`)."""

    name = "pso"
    state_type = PSOState

    # --- ask / tell (`methods.base`) -------------------------------------------------------

    def ask(self, ctx: RunContext, state: PSOState, generation: int) -> Ask:
        """Generation 0: the swarm's positions (base, experts, DARE copies), scored on draw 0,
        then their velocities. Then per step: the personal bests re-scored on a new draw
        (`redraw_opt` only), then every particle moved (a position scored, a velocity stored)."""
        sample = ctx.generation_sample(generation, self.redraw_opt)
        if generation == 0:
            if "positions" not in state.pending:
                return Ask(sample, new=self._initial_positions(ctx), note=POSITIONS)
            positions, rms = state.pending["positions"], state.pending.setdefault("rms", [])
            velocities = [
                Candidate(
                    Member(f"v{i}-g000", origin="velocity"), self._velocity(ctx, positions, i, rms), False
                )
                for i in range(len(positions))
            ]
            return Ask(sample, new=velocities, note=VELOCITIES)
        if self.redraw_opt and "rescored" not in state.pending:
            return Ask(sample, again=[p.best for p in state.particles], note=RESCORED)
        return self._moves(ctx, state, generation, sample)

    def tell(self, ctx: RunContext, state: PSOState, ask: Ask, told: Told) -> PSOState:
        if ask.note == POSITIONS:
            state.pending = {"positions": told.made, "scores": told.scores}
            if self.clamp is not None:
                state.limits = self._limits(ctx)
        elif ask.note == RESCORED:
            for particle in state.particles:
                scores = told[particle.best]
                particle.best_score, particle.best_accuracy = scores.mean, scores.task_accuracy()
            state.leader = self._leader(state)
            state.pending["rescored"] = True
        elif ask.note == VELOCITIES:  # generation 0 is complete
            positions, scores = state.pending["positions"], state.pending["scores"]
            for position, velocity in zip(positions, told.made, strict=True):
                first = scores[position.ident]
                state.particles.append(
                    Particle(position, velocity, position, first.mean, first.task_accuracy())
                )
            state.leader = self._leader(state)
            state.generation = 0
            state.metrics = self._summary(
                state, [p.best_score for p in state.particles], state.pending["rms"]
            )
            state.pending = {}
        else:
            self._moved(state, ask, told)
        return state

    def candidates(self, ctx: RunContext, state: PSOState) -> tuple[list[Member], Sample]:
        """What the final choice compares: the personal bests, the global best first (so under
        `last_draw` the result is the final global best, the paper's), and the last draw."""
        order = [i for i in range(len(state.particles)) if i != state.leader]
        order = [state.leader, *order] if state.particles else []
        members = list({state.particles[i].best.ident: state.particles[i].best for i in order}.values())
        return members, ctx.generation_sample(max(state.generation, 0), self.redraw_opt)

    def details(self, state: PSOState, chosen: Member) -> dict[str, Any]:
        return {"swarm_size": len(state.particles), "leader": state.leader}

    def capacity(self, state: PSOState) -> int | None:
        """One personal best per particle, once the swarm exists."""
        return len(state.particles) or None

    # --- pieces ----------------------------------------------------------------------------

    def _moves(self, ctx: RunContext, state: PSOState, generation: int, sample) -> Ask:
        """Every particle's move toward its personal best and the step's global best: its new
        position (scored) and velocity (stored), made together."""
        leader = state.global_best.best
        global_best: dict[str, Any] = {}
        moves, rms = [], []
        for index, particle in enumerate(state.particles):
            move = Move(self, ctx, state, particle, global_best, leader.ident, generation, index, rms)
            parents = [particle.position.ident, particle.best.ident, leader.ident]
            position = Member(f"p{index}-g{generation:03d}", f"particle:{index}", generation, parents=parents)
            velocity = Member(f"v{index}-g{generation:03d}", "velocity", generation)
            moves += [Candidate(position, move.position), Candidate(velocity, move.velocity, scored=False)]
        return Ask(sample, new=moves, note=MoveRound(generation, rms))

    def _moved(self, state: PSOState, ask: Ask, told: Told) -> None:
        """The moved particles' positions and velocities, personal bests, the global best."""
        position_scores = []
        for index in range(len(told.made) // 2):
            particle = state.particles[index]
            particle.position, particle.velocity = told.made[2 * index], told.made[2 * index + 1]
            scores = told[particle.position]
            position_scores.append(scores.mean)
            if scores.mean > particle.best_score:
                particle.best, particle.best_score = particle.position, scores.mean
                particle.best_accuracy = scores.task_accuracy()
        state.leader = self._leader(state)
        state.pending = {}
        state.generation = ask.note.generation
        state.metrics = self._summary(state, position_scores, ask.note.rms)

    def _move(
        self,
        ctx: RunContext,
        state: PSOState,
        particle: Particle,
        global_best: Mapping[str, torch.Tensor],
        generation: int,
        index: int,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One particle's new position and velocity, computed tensor by tensor in place of the
        loaded ones (so x, v, pbest and gbest are the only models in memory)."""
        x = ctx.store.load(particle.position.ident)
        v = ctx.store.load(particle.velocity.ident)
        same = particle.best.ident == particle.position.ident
        personal = dict(x) if same else ctx.store.load(particle.best.ident)
        coefficients = self._coefficients(ctx, generation, index)
        with ctx.timer.section("merge"):
            for name in x:
                r1, r2 = coefficients(x[name])
                x[name], v[name] = pso_update(
                    x[name],
                    v[name],
                    personal[name],
                    global_best[name],
                    self.inertia,
                    self.c1,
                    self.c2,
                    r1,
                    r2,
                    state.limits.get(name),
                )
        return x, v

    def _initial_positions(self, ctx: RunContext) -> list[Candidate]:
        """The base, the experts and the DARE copies (particles in that order); DARE copy j
        sparsifies expert j mod K (copies cycle over the experts), each with its own seed."""
        names = ctx.models.expert_names
        head = self.head(names)
        size = self.swarm_size if self.swarm_size is not None else len(head) + len(names)
        copies = range(size - len(head))
        origins = head + [f"dare{j // len(names)}:{names[j % len(names)]}" for j in copies]
        members = [Member(f"p{i}-g000", origin) for i, origin in enumerate(origins)]
        makers = [lambda k=k: ctx.load_expert(k) for k in range(len(names))]
        makers = ([lambda: ctx.load_base(self.name)] if self.include_base else []) + makers
        makers += [lambda j=j: self._dare_copy(ctx, j) for j in copies]
        return [Candidate(m, make) for m, make in zip(members, makers, strict=True)]

    def _dare_copy(self, ctx: RunContext, j: int) -> dict[str, torch.Tensor]:
        """DARE copy j, base and expert read tensor by tensor (neither is loaded whole)."""
        base = ctx.base_tensors(self.name)
        expert = ctx.expert_tensors(j % len(ctx.models.expert_names))
        with ctx.timer.section("merge"):
            return {
                name: merge_fns.dare(
                    tensor, [expert[name]], 1 - self.dare_drop, 1.0, ctx.torch_generator("pso-dare", j, name)
                )
                for name, tensor in base.items()
            }

    def _limits(self, ctx: RunContext) -> dict[str, float]:
        """|v| bound per tensor (`clamp`): clamp times the RMS of the experts' task vectors (one
        tensor of the base and the experts in memory at a time)."""
        names = ctx.models.expert_names
        experts = [ctx.expert_tensors(k) for k in range(len(names))]
        limits = {}
        for name, tensor in ctx.base_tensors(self.name).items():
            total = sum(float((expert[name].float() - tensor.float()).pow(2).sum()) for expert in experts)
            limits[name] = self.clamp * math.sqrt(total / (len(names) * tensor.numel()))
        return limits

    def _velocity(self, ctx: RunContext, positions: list[Member], index: int, rms: list[float]):
        """The recipe of particle `index`'s initial velocity (its RMS noted in `rms`)."""

        def make():
            velocity = self._initial_velocity(ctx, positions, index)
            rms.append(_rms(velocity))
            return velocity

        return make

    def _initial_velocity(
        self, ctx: RunContext, positions: list[Member], index: int
    ) -> dict[str, torch.Tensor]:
        """Zero, or u * (x_j - x) toward a random other particle j (u ~ U(0, 1))."""
        x = ctx.store.load(positions[index].ident)
        if self.init_velocity == "zero" or len(positions) < 2:
            return {name: torch.zeros_like(t) for name, t in x.items()}
        rng = ctx.rng("pso-velocity", index)
        other = rng.choice([j for j in range(len(positions)) if j != index])
        u = rng.random()
        target = ctx.store.load(positions[other].ident)
        return {name: (u * (target[name].float() - t.float())).to(t.dtype) for name, t in x.items()}

    def _coefficients(
        self, ctx: RunContext, generation: int, index: int
    ) -> Callable[[torch.Tensor], tuple[Coefficient, Coefficient]]:
        """r1, r2 for each tensor of particle `index`'s move, drawn per `random_scope`; the
        draws depend on (seed, step, particle) only, so a resumed run draws the same."""
        if self.random_scope == "per_element":
            generator = ctx.torch_generator("pso-r", generation, index)
            return lambda t: (
                torch.rand(t.shape, generator=generator),
                torch.rand(t.shape, generator=generator),
            )
        rng = ctx.rng("pso-r", generation, index)
        if self.random_scope == "per_tensor":
            return lambda t: (rng.random(), rng.random())
        pair = (rng.random(), rng.random())
        return lambda t: pair

    @staticmethod
    def _leader(state: PSOState) -> int:
        """The particle with the best personal best; the current leader keeps its place on ties."""
        return max(
            range(len(state.particles)),
            key=lambda i: (state.particles[i].best_score, i == state.leader, -i),
        )

    @staticmethod
    def _summary(state: PSOState, position_scores: list[float], rms: list[float]) -> dict[str, Any]:
        leader = state.global_best
        return {
            "fitness/best": leader.best_score,
            "fitness/mean": statistics.fmean(position_scores),
            "fitness/worst": min(position_scores),
            "best/score": leader.best_score,
            **{f"best/{task}": acc for task, acc in leader.best_accuracy.items()},
            "best/ident": leader.best.ident,
            "swarm/size": len(state.particles),
            "velocity/rms": statistics.fmean(rms),
        }


def _rms(tensors: Mapping[str, torch.Tensor]) -> float:
    """Root mean square over all entries of a model (velocity size, for the metrics)."""
    total = sum(float(t.float().pow(2).sum()) for t in tensors.values())
    count = sum(t.numel() for t in tensors.values())
    return math.sqrt(total / count) if count else 0.0


@dataclass
class MoveRound:
    generation: int
    rms: list[float]  # each moved particle's velocity RMS (metrics)


@dataclass
class Move:
    """One particle's PSO move, made once for its two individuals: the position (scored) and
    the velocity (stored); the step's global best is read once, by the first move made."""

    pso: PSO
    ctx: RunContext
    state: PSOState
    particle: Particle
    global_best: dict[str, torch.Tensor]  # shared by the step's moves, filled on first use
    leader: str
    generation: int
    index: int
    rms: list[float]  # each move's velocity RMS, in order (metrics)
    velocity_tensors: dict[str, torch.Tensor] | None = None

    def position(self) -> dict[str, torch.Tensor]:
        if not self.global_best:
            self.global_best.update(self.ctx.store.load(self.leader))
        x, self.velocity_tensors = self.pso._move(
            self.ctx, self.state, self.particle, self.global_best, self.generation, self.index
        )
        self.rms.append(_rms(self.velocity_tensors))
        return x

    def velocity(self) -> dict[str, torch.Tensor]:
        velocity, self.velocity_tensors = self.velocity_tensors, None
        return velocity
