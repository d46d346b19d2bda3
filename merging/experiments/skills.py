"""Skill scores: a plan's accuracy per skill (the eval set's category, e.g. the toy's kinds) on a small
stratified item set, and the same along α — the class's central picture, for whatever plan is drawn.

Both are one-cell sweeps (`sweep.run_sweep`): answers batched and cached like any sweep's, the scores
and their Wilson 95 % intervals per category from `sweep.cell_row`, a Stop between batches.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem, category_indices
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import Answerer
from merging.run.generate import GenerationSettings
from merging.run.probe import scale_plan
from merging.experiments.sweep import Cell, run_sweep

SKILL_ITEMS_PER_KIND = 40
SKILL_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def skill_items(items: list[EvalItem], per_skill: int = SKILL_ITEMS_PER_KIND, seed: int = 0) -> list[EvalItem]:
    """Up to `per_skill` items of each category (all of a smaller one), drawn with `random.Random(seed)`,
    in the eval set's order. MergescopeError for `per_skill` < 1."""
    if per_skill < 1:
        raise MergescopeError(f"items per skill {per_skill}: must be ≥ 1")
    groups = category_indices(items)
    rng = random.Random(seed)
    chosen = sorted(i for g in groups.values() for i in (g if len(g) <= per_skill else rng.sample(g, per_skill)))
    return [items[i] for i in chosen]


def skill_scores(answerer: Answerer, plan: MergePlan, items: list[EvalItem], settings: GenerationSettings,
                 donor: str | None = None, alpha: float | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> dict:
    """`plan`'s sweep row on `items` (`sweep.cell_row`), answered under `settings` (the pair's answer
    length: a math answer cut short is a wrong one): "by_category" holds each skill's strict "accuracy"
    with its Wilson 95 % "low" and "high" and its "items"; "complete" is False when `should_stop()` ended
    it between batches. `alpha` labels the row (None: the plan as drawn)."""
    cell = Cell("skills", "current plan", alpha, plan)
    return run_sweep(answerer, [cell], items, settings, donor=donor, should_stop=should_stop)[0]


def skill_scan(answerer: Answerer, plan: MergePlan, items: list[EvalItem], settings: GenerationSettings,
               alphas: Sequence[float] = SKILL_ALPHAS, donor: str | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """`skill_scores` of `plan` scaled to each α of `alphas` (`probe.scale_plan`: its largest α becomes α,
    its shape kept; α 0 is the base VLM), one row per α in order. Ends after a row `should_stop()` cut
    short, or before the next α once it says True. Raises PlanError for an α outside [0, 1] (before
    anything runs)."""
    num_layers = answerer.pair_with(donor).layout.num_layers
    scaled = [(float(a), scale_plan(plan, a, num_layers)) for a in alphas]
    for alpha, alpha_plan in scaled:
        if should_stop():
            return
        row = skill_scores(answerer, alpha_plan, items, settings, donor, alpha, should_stop)
        yield row
        if not row["complete"]:
            return
