"""The merge panel's plain functions: the α table, answer diffs and badges, a plan shown in the editor.

No Gradio components here: each takes and returns plain values, so the tabs' handlers and the tests
can call them directly."""

from __future__ import annotations

import difflib

import pandas as pd

from merging.plan import curves
from merging.errors import MergescopeError
from merging.limits import brief
from merging.plan.merge_plan import MergePlan


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
