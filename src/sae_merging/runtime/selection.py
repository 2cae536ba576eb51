"""Choosing the final model among a method's candidates, on optimization data only (`selection=`).

- `last_draw`: the best task score on the last optimization draw (the paper's reading; a
  small draw, so the pick is noisy and favours whoever was lucky on it).
- `all_draws`: the best task score over every draw-pool example the candidate was ever scored
  on (the fitness cache holds them: no extra scoring); per task the mean over those examples,
  then the mean over tasks.
- `validation`: the best task score on the validation set, a seeded part of the `opt` split
  held out of every draw (`task.validation_size`): the same unseen examples for every
  candidate. Its scoring goes through the fitness evaluator, so it is counted in
  `examples_scored` and reported on its own as `selection_examples_scored`. Under an example
  budget the search keeps what the choice will cost (`selection_cost`) in reserve, so a run's
  total, search plus choice, is the budget.

Test data never enter a choice: the test set is scored once, by the runner, for the chosen
model only.
"""

from __future__ import annotations

from collections.abc import Sequence

from sae_merging.runtime.context import Member, Outcome, RunContext, Sample
from sae_merging.runtime.fitness import Scores
from sae_merging.tasks.settings import SELECTIONS  # noqa: F401  (the rules, checked in preflight)


def validation_sample(ctx: RunContext) -> Sample:
    """Every task's validation set (tasks without one are left out)."""
    sample = {t.name: (t, ctx.tasks.validation_set(t, ctx.seed)) for t in ctx.tasks.tasks}
    return {name: pair for name, pair in sample.items() if pair[1]}


def choice_sample(ctx: RunContext, default: Sample) -> Sample:
    """What a choice is scored on: the validation set under `selection=validation`, else
    `default` (an optimization draw: a one-shot choice's, or a search's last one)."""
    return validation_sample(ctx) if ctx.selection == "validation" else default


def choice_costs(ctx: RunContext, members: Sequence[Member], last: Sample) -> list[int]:
    """Per distinct candidate, the examples `select(ctx, members, last)` will score for it:
    those of the rule's sample that are not cached yet."""
    sample = choice_sample(ctx, last)
    return [ctx.fitness.uncached(ident, sample) for ident in {m.ident: None for m in members}]


def selection_cost(ctx: RunContext, members: Sequence[Member], last: Sample) -> int:
    """The (candidate, example) pairs `select(ctx, members, last)` will score."""
    return sum(choice_costs(ctx, members, last))


def all_draws_scores(ctx: RunContext, member: Member, last: Sample) -> Scores:
    """Per task, the member's correctness on every draw-pool example in its fitness cache."""
    ctx.score(member, last)  # normally cached already; makes sure the last draw is included
    known = ctx.fitness.cache.get(member.ident, {})
    return Scores(
        {
            t.name: [known[e.uid] for e in ctx.tasks.draw_pool(t, ctx.seed) if e.uid in known]
            for t in ctx.tasks.tasks
        }
    )


def selection_scores(ctx: RunContext, member: Member, last: Sample) -> Scores:
    """The scores the rule `ctx.selection` compares `member` by."""
    if ctx.selection == "last_draw":
        return ctx.score(member, last)
    if ctx.selection == "all_draws":
        return all_draws_scores(ctx, member, last)
    return ctx.score(member, validation_sample(ctx))


def select(ctx: RunContext, members: Sequence[Member], last: Sample, details: dict | None = None) -> Outcome:
    """The candidate with the best selection score (the first of equals), with those scores.
    `last` is the method's last optimization draw."""
    if not members:
        raise ValueError("no candidates to select from")
    before = ctx.fitness.counters.examples_scored
    best: tuple[Scores, Member] | None = None
    for member in members:
        scores = selection_scores(ctx, member, last)
        if best is None or scores.mean > best[0].mean:
            best = (scores, member)
    spent = ctx.fitness.counters.examples_scored - before
    return Outcome(best[1], best[0], dict(details or {}), selection_examples=spent)
