"""An XY grid of answers for one question (after Stable Diffusion supermerger's XY plot, issue #22).

Two axes, each a kind of change to the current plan and its values; every cell is the plan changed
along both, asked for its answer (`Answerer.ask`, cached) and its first-token distribution
(`Answerer.distribution`: p(top) and KL to the base VLM). Kinds:

- "alpha": the plan scaled so its largest α is the value (`probe.scale_plan`, shape kept);
- "preset": each rule's curve replaced by the named preset reaching the rule's largest α
  (constant: that α; linear / loglinear: from 0 up to it; step: it from the middle layer on);
- "group": the plan restricted to one component group ("attention", "mlp", "norms"; "all": unchanged);
- "method": each rule merged by the named method (the rule's params kept when the method is the same);
- "step": each rule's curve a step at the given layer, to the rule's largest α (a layer swap).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from PIL import Image

from merging.errors import MergescopeError
from merging.limits import brief
from merging.methods import REGISTRY
from merging.plan import curves
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import Answerer
from merging.run.generate import GenerationSettings
from merging.run.probe import kl_divergence, scale_plan
from merging.run.sensitivity import LAYER_GROUPS, group_components

AXIS_KINDS = ("alpha", "preset", "group", "method", "step")
PRESET_CHOICES = ("constant", "linear", "loglinear", "step")
GROUP_CHOICES = (*LAYER_GROUPS, "all")
MAX_CELLS = 64
XY_SETTINGS = GenerationSettings(max_new_tokens=8)  # a cell's answer: a few tokens, as the α scan's
ORDER = {"preset": 0, "step": 1, "group": 2, "method": 3, "alpha": 4}  # alpha last: it rescales the result


def check_axis(kind: Any, values: Any, num_layers: int, what: str) -> tuple[str, list]:
    """(kind, values) of one axis, checked: MergescopeError (one line) for an unknown kind, an empty list
    or more than MAX_CELLS values, or a value the kind does not take."""
    if kind not in AXIS_KINDS:
        raise MergescopeError(f"{what}: unknown axis {brief(kind, 40)}; choose from {list(AXIS_KINDS)}")
    if not isinstance(values, list) or not 0 < len(values) <= MAX_CELLS:
        raise MergescopeError(f"{what}: give a list of 1 to {MAX_CELLS} values, got {brief(values, 60)}")
    choices = {"preset": PRESET_CHOICES, "group": GROUP_CHOICES, "method": tuple(REGISTRY)}.get(kind)
    for value in values:
        if choices is not None and value not in choices:
            raise MergescopeError(f"{what}: unknown {kind} {brief(value, 40)}; choose from {list(choices)}")
        if kind == "alpha" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                    and 0 <= value <= 1):
            raise MergescopeError(f"{what}: α {brief(value, 40)} is not a number in [0, 1]")
        if kind == "step" and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < num_layers):
            raise MergescopeError(f"{what}: step layer {brief(value, 40)} is not a whole number in "
                                  f"[0, {num_layers - 1}]")
    return kind, [float(v) if kind == "alpha" else v for v in values]


def _curve(kind: str, value: Any, top: float, num_layers: int) -> dict:
    if kind == "step" or value == "step":
        return {"preset": "step", "layer": value if kind == "step" else num_layers // 2, "value": top}
    return {"constant": {"preset": "constant", "value": top}, "linear": {"preset": "linear", "start": 0.0, "end": top},
            "loglinear": {"preset": "loglinear", "start": 0.0, "end": top}}[value]


def changed_plan(plan: MergePlan, kind: str, value: Any, num_layers: int) -> MergePlan:
    """`plan` changed along one axis (see the module docstring). Raises PlanError for a curve that does
    not fit `num_layers` or params the new method refuses."""
    if kind == "alpha":
        return scale_plan(plan, value, num_layers)
    rules = []
    for rule in plan.rules:
        data = rule.to_dict()
        if kind in ("preset", "step"):
            alphas = curves.layer_alphas(rule.curve, num_layers)
            data["curve"] = _curve(kind, value, max(alphas + [curves.non_layer_alpha(rule.curve, alphas)]), num_layers)
        elif kind == "method":
            data.update(method=value, params=data["params"] if value == rule.method else {})
        elif kind == "group" and value != "all":
            data["components"] = group_components(rule, value)
        if data["components"]:
            rules.append(data)
    return MergePlan.from_dict({"rules": rules})


def xy_grid(answerer: Answerer, plan: MergePlan, question: str, image: Image.Image | None,
            x: tuple[str, list], y: tuple[str, list], settings: GenerationSettings = XY_SETTINGS,
            max_cells: int = MAX_CELLS, donor: str | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """Row by row (y outer, x inner): {"x", "y" (the axis values), "plan" (the cell's plan as a mapping),
    "plan_hash", "answer" (`ask`'s), "p_top" (probability of the cell's most probable first token),
    "kl_to_base" (KL(base VLM ‖ cell), nats), "differs" (answer ≠ the base VLM's), "cached"}. Axes are
    (kind, values) as `check_axis` returns them, of different kinds. `should_stop()` is asked before each
    cell. Raises MergescopeError before anything runs for the same kind twice or more than `max_cells`
    cells; PlanError for a cell whose plan is refused."""
    if x[0] == y[0]:
        raise MergescopeError(f"the two axes are both {x[0]!r}; choose two different kinds")
    if len(x[1]) * len(y[1]) > max_cells:
        raise MergescopeError(f"{len(x[1])} × {len(y[1])} = {len(x[1]) * len(y[1])} cells; the limit is {max_cells}")
    num_layers = answerer.pair_with(donor).layout.num_layers
    first, second = sorted((x, y), key=lambda axis: ORDER[axis[0]])
    plans = {}
    for yv in y[1]:
        for xv in x[1]:
            values = {x[0]: xv, y[0]: yv}
            step = changed_plan(plan, first[0], values[first[0]], num_layers)
            plans[(repr(xv), repr(yv))] = changed_plan(step, second[0], values[second[0]], num_layers)
    for cell in plans.values():
        answerer.engine.resolve(cell)  # every plan is checked before the first forward pass
    base_answer = answerer.ask(MergePlan(), question, image, settings, donor)["answer"]
    base = answerer.distribution(MergePlan(), question, image, top_k=1, donor=donor)
    for yv in y[1]:
        for xv in x[1]:
            if should_stop():
                return
            cell = plans[(repr(xv), repr(yv))]
            reply = answerer.ask(cell, question, image, settings, donor)
            dist = answerer.distribution(cell, question, image, top_k=1, donor=donor)
            yield {"x": xv, "y": yv, "plan": cell.to_dict(), "plan_hash": cell.hash(), "answer": reply["answer"],
                   "p_top": dist["tokens"][0][1], "kl_to_base": kl_divergence(base["summary"], dist["summary"]),
                   "differs": reply["answer"] != base_answer, "cached": reply["cached"] and dist["cached"]}
