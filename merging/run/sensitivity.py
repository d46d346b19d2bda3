"""Which layers moved this answer? Layer sensitivity of one question under a plan (issue #22).

For each block of k consecutive decoder layers × component group (attention, MLP, norms) two plans are
built from the current plan: "only" merges that block and group alone, at the α the plan gives it
there (everything else stays the VLM's), and "without" is the plan with that block and group put back
to the VLM (its α set to 0 there; for `linear` that is an exact copy of the VLM's tensors). Each plan's
first-token distribution comes from `Answerer.distribution` — through the answers cache, under the
engine's lock, one forward pass on a miss — and is compared with the base VLM's.

The plans are ordinary plans (custom curves), so a cell is reproducible by asking its plan directly.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from PIL import Image

from merging.errors import MergescopeError
from merging.model.layout import ATTENTION_ROLES, MLP_ROLES, NORM_ROLES
from merging.plan import curves
from merging.plan.merge_plan import MergePlan, Rule
from merging.run.answerer import Answerer
from merging.run.probe import first_token_id, kl_divergence, probability_of

# The per-layer groups a block is split into: the name a row carries → the plan group and its roles.
LAYER_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "attention": ("self_attn", ATTENTION_ROLES),
    "mlp": ("mlp", MLP_ROLES),
    "norms": ("norms", NORM_ROLES),
}
MODES = ("only", "without")


def blocks(num_layers: int, size: int) -> list[tuple[int, int]]:
    """[(first, last), ...] covering layers 0..num_layers−1 in blocks of `size` (the last may be shorter);
    MergescopeError for a size outside [1, num_layers]."""
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= num_layers:
        raise MergescopeError(f"block={size!r}: a block is 1 to {num_layers} layers")
    return [(first, min(first + size, num_layers) - 1) for first in range(0, num_layers, size)]


def group_components(rule: Rule, group: str) -> list[str]:
    """The components of `rule` that fall in `group` (a LAYER_GROUPS name), as plan components."""
    plan_group, roles = LAYER_GROUPS[group]
    if any(c in ("all", plan_group) for c in rule.components):
        return [plan_group]
    return [c for c in rule.components if c in roles]


def block_plan(plan: MergePlan, num_layers: int, block: tuple[int, int], group: str, mode: str) -> MergePlan:
    """The plan of one sensitivity cell (see the module docstring). Each rule of `plan` touching `group`
    gives a rule for just that group's components with its curve made `custom`: "only" keeps the rule's
    α inside `block` and 0 elsewhere (non-layer tensors 0), "without" keeps it outside and 0 inside,
    placed before the rule itself so the first-match order of the plan is kept. A plan left with no
    non-zero α is the empty plan (the base VLM, and its cache entries). Raises MergescopeError for an
    unknown group or mode, PlanError for a curve that does not fit `num_layers`."""
    if group not in LAYER_GROUPS:
        raise MergescopeError(f"unknown group {group!r}; choose from {list(LAYER_GROUPS)}")
    if mode not in MODES:
        raise MergescopeError(f"unknown mode {mode!r}; choose from {list(MODES)}")
    first, last = block
    rules = []
    for rule in plan.rules:
        components = group_components(rule, group)
        alphas = curves.layer_alphas(rule.curve, num_layers)
        if components:
            inside = [first <= layer <= last for layer in range(num_layers)]
            values = [a if keep == (mode == "only") else 0.0 for a, keep in zip(alphas, inside)]
            if any(values):
                rules.append(dict(rule.to_dict(), components=components,
                                  curve={"preset": "custom", "values": values, "non_layer": 0.0}))
        if mode == "without":
            rules.append(rule.to_dict())
    merged = MergePlan.from_dict({"rules": rules})
    return merged if any(_nonzero(r, num_layers) for r in merged.rules) else MergePlan()


def _nonzero(rule: Rule, num_layers: int) -> bool:
    alphas = curves.layer_alphas(rule.curve, num_layers)
    return any(alphas) or curves.non_layer_alpha(rule.curve, alphas) != 0.0


def layer_sensitivity(answerer: Answerer, plan: MergePlan, question: str, image: Image.Image | None = None,
                      block: int = 1, gold: str | None = None, donor: str | None = None,
                      should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """One row per (block, group, mode), blocks in depth order, groups as LAYER_GROUPS, "only" first:
    {"layers": [first, last] (0-based, inclusive), "group", "mode", "p_top": probability of the base
    VLM's most probable first token under the cell's plan (None where the stored summary of a vocabulary
    larger than `probe.TOP_STORED` no longer lists it), "p_gold": of `gold`'s first token (None
    without gold), "kl_to_base": KL(base VLM ‖ cell) in nats (`probe.kl_divergence`), "answer": the
    cell's most probable first token (text), "plan_hash", "cached": whether no forward pass ran}.
    `should_stop()` is asked before each cell; when it says True, no more rows come. Raises
    MergescopeError for a bad block size (before anything runs), a bad question, image or gold,
    PlanError for a bad plan."""
    num_layers = answerer.pair_with(donor).layout.num_layers
    spans = blocks(num_layers, block)
    gold_id = None if gold is None else first_token_id(answerer.engine.pair, question, image, gold)
    base = answerer.distribution(MergePlan(), question, image, top_k=1, gold=gold, donor=donor)
    top_id = base["summary"]["top"][0][0]
    for span in spans:
        for group in LAYER_GROUPS:
            for mode in MODES:
                if should_stop():
                    return
                cell = block_plan(plan, num_layers, span, group, mode)
                dist = answerer.distribution(cell, question, image, top_k=1, gold=gold, donor=donor)
                yield {"layers": list(span), "group": group, "mode": mode,
                       "p_top": probability_of(dist["summary"], top_id),
                       "p_gold": dist["p_gold"] if gold_id is not None else None,
                       "kl_to_base": kl_divergence(base["summary"], dist["summary"]),
                       "answer": dist["tokens"][0][0], "plan_hash": cell.hash(), "cached": dist["cached"]}
