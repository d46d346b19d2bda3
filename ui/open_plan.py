"""Open a plan in the Compare editor (Search's "Open in Compare", an XY grid cell's click): the values
of the editor's controls that show the plan."""

from __future__ import annotations

import gradio as gr

from merging.plan import curves
from merging.plan.merge_plan import MergePlan
from merging.run.probe import GROUP_COMPONENTS

from .explorer import Explorer
from .panel import CURVE_GROUPS, component_choices
from .plan_panel import editor_state


def editor_outputs(compare) -> list:
    """The Compare controls `editor_values` fills, in its order."""
    return [compare.separate, compare.group_ticks, *compare.group_curves, compare.components, compare.curve,
            compare.method, compare.status]


def keep_editor() -> list:
    """`editor_outputs` left as they are."""
    return [gr.update()] * (6 + len(CURVE_GROUPS))


def editor_values(explorer: Explorer, plan: MergePlan, note: str) -> list:
    """Values for `editor_outputs`: separate curves when the plan's rules are the editor's groups with one
    method, else the first rule in the linked editor; `note` (what was opened) in Compare's status."""
    by_components = {components: group for group, components in GROUP_COMPONENTS.items()}
    groups = {by_components.get(rule.components): rule for rule in plan.rules}
    layers = explorer.num_layers
    if plan.rules and None not in groups and len({rule.method for rule in plan.rules}) == 1:
        group_curves = [curves.layer_alphas(groups[g].curve, layers) if g in groups else [0.0] * layers
                        for g in CURVE_GROUPS]
        return [True, [g for g in CURVE_GROUPS if g in groups], *group_curves, gr.update(), gr.update(),
                plan.rules[0].method, note + ": one curve per group"]
    role_order = [role for _, role in component_choices(explorer)]
    comps, method, _, alphas = editor_state(plan, explorer.engine.pair.layout, role_order)
    shown = " (first rule shown)" if len(plan.rules) > 1 else ""
    return [False, gr.update(), *[gr.update()] * len(CURVE_GROUPS), comps, alphas, method, note + shown]
