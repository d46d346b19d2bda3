"""The merge panel as one value: `Panel` (components, α curve, method, separate curves, parameters by
name) and the one function from it to a `MergePlan` (`plan_of`).

Gradio hands a handler its inputs positionally, one per component; `with_panel` is the one place that
folds the panel's controls (in `PANEL_CONTROLS` order) into a `Panel`, so every handler takes
`panel: Panel` and the scripting API keeps one named argument per control.
"""

from __future__ import annotations

import inspect
import keyword
import typing
from dataclasses import dataclass, field
from typing import Callable

from merging.errors import PlanError
from merging.limits import MAX_LIST, brief
from merging.methods import REGISTRY, ParamDef
from merging.model.layout import ATTENTION_ROLES, MLP_ROLES, NORM_ROLES
from merging.plan.merge_plan import MergePlan
from merging.run.probe import GROUP_COMPONENTS, group_plan

from .explorer import Explorer


def method_params() -> list[ParamDef]:
    """One control per parameter name across all methods (defaults set per method on selection)."""
    seen: dict[str, ParamDef] = {}
    for method in REGISTRY.values():
        for p in method.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


PARAM_DEFS = method_params()
CURVE_GROUPS = tuple(GROUP_COMPONENTS)  # the separate curves' groups: "Attention", "MLP", "Norms", ...
COMPONENT_GROUPS = [("Attention", ATTENTION_ROLES), ("MLP", MLP_ROLES), ("Norms", NORM_ROLES),
                    ("Embeddings", ("embed_tokens",)), ("Final norm", ("norm",)), ("LM head", ("lm_head",))]
# the panel's controls in the order Gradio passes them, named as the API lists them (`lambda` as
# `lambda_`: a parameter name must not be a keyword); see `with_panel`
PANEL_CONTROLS = ("components", "curve", "method", "groups",
                  *(p.name + "_" if keyword.iskeyword(p.name) else p.name for p in PARAM_DEFS))


@dataclass(frozen=True)
class Panel:
    """What the merge panel shows. `alphas`: α per decoder layer (the linked curve); `groups`: with
    separate curves, {group of CURVE_GROUPS: α per layer} for the ticked groups, else None; `params`:
    {parameter name: value} for every box (the method's own are kept, the rest dropped by `plan_of`)."""

    components: list[str]
    alphas: list[float]
    method: str = "linear"
    groups: dict[str, list[float]] | None = None
    params: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_controls(cls, components, curve, method, groups, *param_values) -> Panel:
        """The panel from its controls' values in PANEL_CONTROLS order (what Gradio sends)."""
        return cls(components, curve, method, groups, {p.name: v for p, v in zip(PARAM_DEFS, param_values)})


def _method_params(method, params: dict) -> dict:
    known = {p.name for p in REGISTRY[method].params} if isinstance(method, str) and method in REGISTRY else set()
    return {k: v for k, v in params.items() if k in known and v is not None}


def _curve(alphas) -> dict:
    """The drawn curve as exact per-layer values; PlanError (one line) for anything but a list of numbers
    (a crafted API call)."""
    if not isinstance(alphas, list) or len(alphas) > MAX_LIST or \
            not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
        raise PlanError(f"the α curve must be a list of numbers, one per layer; got {brief(alphas)}")
    return {"preset": "custom", "values": [float(a) for a in alphas]}


def plan_of(panel: Panel) -> MergePlan:
    """The plan the panel shows: one rule from the linked curve (none without components), or with
    separate curves one rule per ticked group (merging.run.probe.group_plan). Raises PlanError (one
    line) for anything the panel cannot send."""
    params = _method_params(panel.method, panel.params)
    if panel.groups:
        groups = panel.groups
        if not isinstance(groups, dict) or not set(groups) <= set(CURVE_GROUPS):
            raise PlanError(f"separate curves: groups must be among {list(CURVE_GROUPS)}; got {brief(groups)}")
        return group_plan({g: _curve(values) for g, values in groups.items()}, method=panel.method,
                          params=params or None)
    if not panel.components:
        return MergePlan()
    components = list(panel.components) if isinstance(panel.components, list) else panel.components
    rule = {"components": components, "method": panel.method, "curve": _curve(panel.alphas), "params": params}
    return MergePlan.from_dict({"rules": [rule]})


def with_panel(fn: Callable) -> Callable:
    """`fn`, which takes `panel: Panel`, as Gradio calls it: that parameter spread into one positional
    parameter per control (PANEL_CONTROLS), folded back into a Panel before `fn` runs. Type hints,
    name, docstring and generator-ness are kept (Gradio reads them for gr.Request and the API)."""
    signature = inspect.signature(fn)
    names = list(signature.parameters)
    at, width = names.index("panel"), len(PANEL_CONTROLS)

    def fold(args: tuple) -> tuple:
        return (*args[:at], Panel.from_controls(*args[at:at + width]), *args[at + width:])

    if inspect.isgeneratorfunction(fn):
        def spread(*args, **kwargs):
            yield from fn(*fold(args), **kwargs)
    else:
        def spread(*args, **kwargs):
            return fn(*fold(args), **kwargs)
    hints = typing.get_type_hints(fn)
    before, after = list(signature.parameters.values())[:at], list(signature.parameters.values())[at + 1:]
    controls = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in PANEL_CONTROLS]
    spread.__signature__ = signature.replace(parameters=[*before, *controls, *after])
    spread.__annotations__ = {k: v for k, v in hints.items() if k != "panel"}
    spread.__name__ = spread.__qualname__ = fn.__name__
    spread.__doc__ = fn.__doc__
    return spread


def component_choices(explorer: Explorer) -> list[tuple[str, str]]:
    """(label, role) for the components tick boxes: the loaded layout's roles, grouped as COMPONENT_GROUPS."""
    roles = set(explorer.engine.pair.layout.roles())
    return [(f"{group} · {role}", role) for group, names in COMPONENT_GROUPS for role in names if role in roles]


def attention_roles(explorer: Explorer) -> list[str]:
    roles = set(explorer.engine.pair.layout.roles())
    return [r for r in ATTENTION_ROLES if r in roles]
