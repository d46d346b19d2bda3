"""The merge panel's plain functions: controls → plan, the α table, answer diffs and badges.

No Gradio components here: each takes and returns plain values, so the tabs' handlers and the tests
can call them directly."""

from __future__ import annotations

import difflib

import pandas as pd

from merging.plan import curves
from merging.errors import MergescopeError, PlanError
from merging.limits import MAX_LIST, brief
from merging.methods import REGISTRY, ParamDef
from merging.plan.merge_plan import MergePlan


def method_params() -> list[ParamDef]:
    """One control per parameter name across all methods (defaults set per method on selection)."""
    seen: dict[str, ParamDef] = {}
    for method in REGISTRY.values():
        for p in method.params:
            seen.setdefault(p.name, p)
    return list(seen.values())


PARAM_DEFS = method_params()


def plan_from_ui(components: list[str], method: str, alphas: list[float], params: dict) -> MergePlan:
    """The plan the merge panel shows: one rule, the drawn curve as exact per-layer values.

    Raises PlanError (one line) for anything the panel cannot send, e.g. a crafted API call whose
    curve is not a list of numbers."""
    if not components:
        return MergePlan()
    if not isinstance(alphas, list) or len(alphas) > MAX_LIST or \
            not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
        raise PlanError(f"the α curve must be a list of numbers, one per layer; got {brief(alphas)}")
    known = {p.name for p in REGISTRY[method].params} if isinstance(method, str) and method in REGISTRY else set()
    rule = {"components": list(components) if isinstance(components, list) else components, "method": method,
            "curve": {"preset": "custom", "values": [float(a) for a in alphas]},
            "params": {k: v for k, v in params.items() if k in known and v is not None}}
    return MergePlan.from_dict({"rules": [rule]})


def current_plan(comps, method_name, alphas, *param_values) -> MergePlan:
    """The plan from the panel's controls: components, method, curve, then one value per PARAM_DEFS."""
    return plan_from_ui(comps, method_name, alphas, {p.name: v for p, v in zip(PARAM_DEFS, param_values)})


GROUPS = ("Attention", "MLP", "Norms", "Embeddings/Head")  # the separate curves' groups (merging.run.probe)


def plan_of(comps, alphas, method_name, groups, *param_values) -> MergePlan:
    """The plan the panel shows: one rule from the linked curve, or with separate curves (`groups`:
    {group: α per layer}) one rule per ticked group (merging.run.probe.group_plan)."""
    if not groups:
        return current_plan(comps, method_name, alphas, *param_values)
    if not isinstance(groups, dict) or not set(groups) <= set(GROUPS) or len(groups) > len(GROUPS):
        raise PlanError(f"separate curves: groups must be among {list(GROUPS)}; got {brief(groups)}")
    try:
        from merging.run.probe import group_plan
    except ImportError:
        raise MergescopeError("separate curves need merging.run.probe (group_plan), not installed here") from None
    curves_by_group = {}
    for group, values in groups.items():
        # the same checks as the linked curve's (a list of numbers), via a one-rule plan
        rule = plan_from_ui(["all"], "linear", values, {}).rules[0]
        curves_by_group[group] = rule.curve
    known = {p.name for p in REGISTRY[method_name].params} \
        if isinstance(method_name, str) and method_name in REGISTRY else set()
    params = {p.name: v for p, v in zip(PARAM_DEFS, param_values) if p.name in known and v is not None}
    return group_plan(curves_by_group, method=method_name, params=params or None)


def parse_table(table: pd.DataFrame, num_layers: int) -> list[float]:
    """α values from the exact-value table, or a clear error naming the bad cell."""
    if len(table) != num_layers:
        raise MergescopeError(f"the table must have {num_layers} rows, one per layer; it has {len(table)}")
    alphas = []
    for layer, value in enumerate(table.iloc[:, 1].tolist()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MergescopeError(f"layer {layer}: {brief(value, 40)} is not a number between 0 and 1") from None
        alphas.append(curves.check_alpha(number, f"layer {layer}"))
    return alphas


def table_of(alphas: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"layer": list(range(len(alphas))), "α": [round(a, 4) for a in alphas]})


def token_diff(base: str, merged: str) -> list[tuple[str, str | None]]:
    """Word-level diff for gr.HighlightedText: '-' only in the base answer, '+' only in the merged one."""
    a, b = base.split(), merged.split()
    out: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out += [(w + " ", None) for w in a[i1:i2]]
        else:
            out += [(w + " ", "-") for w in a[i1:i2]] + [(w + " ", "+") for w in b[j1:j2]]
    return out


def badge(result: dict) -> str:
    state = "cached ✓" if result["cached"] else ("done" if result["done"] else "generating…")
    return f"{result['seconds']:.2f} s · {state} · plan `{result['plan_hash']}`"


def first_curve(plan_yaml: str, num_layers: int) -> list[float] | None:
    if not plan_yaml:
        return None
    plan = MergePlan.from_text(plan_yaml)
    return curves.layer_alphas(plan.rules[0].curve, num_layers) if plan.rules else None


def plan_summary(plan: dict) -> str:
    rules = plan.get("rules", [])
    if not rules:
        return "base VLM"
    return "; ".join(f"{'+'.join(r['components'])} {r['method']} {r['curve'].get('preset')}" for r in rules)


def editor_state(plan: MergePlan, layout, role_order: list[str]):
    """(components, method, params, α per layer) that show `plan`'s first rule in the editor; groups
    such as `self_attn` or `all` become the roles they cover."""
    if not plan.rules:
        return [], "linear", {}, [0.0] * layout.num_layers
    rule = plan.rules[0]
    covered = {s.role for s in layout.slots if any(s.matches(c) for c in rule.components)}
    return ([r for r in role_order if r in covered], rule.method, dict(rule.params),
            curves.layer_alphas(rule.curve, layout.num_layers))
