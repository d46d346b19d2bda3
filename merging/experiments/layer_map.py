"""Layer sensitivity over an eval set (issue #22): which layer blocks carry which kind of question.

For each block of decoder layers × component group (`merging.run.sensitivity`), the plan that merges
only that block and group is asked for every item's first-token distribution, and the change of
log p(gold's first token) from the base VLM is averaged per category (the toy's kinds: perception
kinds such as colour and shape vs text kinds). A strongly negative cell says: putting the donor's
weights there takes that kind of answer away — the picture behind "early layers carry perception".
Cells run plan by plan (the weights change once per cell; items within a cell only run forward
passes), all through the answers cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go

from merging.errors import MergescopeError
from merging.evals.eval_sets import EvalItem
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import Answerer
from merging.run.sensitivity import LAYER_GROUPS, block_plan, blocks

LOG_FLOOR = math.log(1e-30)  # log p of a gold token whose probability underflows float32 to 0


def _log(p: float) -> float:
    return math.log(p) if p > 0 else LOG_FLOOR


def eval_layer_sensitivity(answerer: Answerer, plan: MergePlan, items: list[EvalItem], block: int = 1,
                           donor: str | None = None, progress: Callable[[int, int], None] | None = None,
                           should_stop: Callable[[], bool] = lambda: False) -> dict:
    """{"blocks": [[first, last], ...], "groups": LAYER_GROUPS' names, "categories": {category: {group:
    [mean Δ log p(gold) in nats per block]}} (category "all" for items without one), "counts":
    {category: items}, "items": items used, "skipped": [{"id", "error"}] (items whose image, question
    or gold cannot be read), "complete": False when `should_stop()` ended it early (the means then
    cover the cells done; cells not reached are None)}. Δ = ln p_only − ln p_base per item, p = 0 taken
    as e^LOG_FLOOR. `progress(done, total)` counts forward passes. MergescopeError for a bad block."""
    num_layers = answerer.pair_with(donor).layout.num_layers
    spans = blocks(num_layers, block)
    base, skipped = {}, []
    for item in items:
        try:
            image = item.image()
            base[item.id] = (image, _log(answerer.distribution(MergePlan(), item.question, image, top_k=1,
                                                               gold=item.answer, donor=donor)["p_gold"]))
        except MergescopeError as exc:
            skipped.append({"id": item.id, "error": str(exc)})
    used = [item for item in items if item.id in base]
    counts: dict[str, int] = {}
    for item in used:
        counts[item.category or "all"] = counts.get(item.category or "all", 0) + 1
    table = {c: {g: [None] * len(spans) for g in LAYER_GROUPS} for c in counts}
    done, total, complete = 0, len(spans) * len(LAYER_GROUPS) * len(used), True
    for b, span in enumerate(spans):
        for group in LAYER_GROUPS:
            if should_stop():
                complete = False
                break
            cell = block_plan(plan, num_layers, span, group, "only")
            sums = dict.fromkeys(counts, 0.0)
            for item in used:
                image, base_log = base[item.id]
                p = answerer.distribution(cell, item.question, image, top_k=1, gold=item.answer, donor=donor)["p_gold"]
                sums[item.category or "all"] += _log(p) - base_log
                done += 1
                if progress:
                    progress(done, total)
            for category, total_delta in sums.items():
                table[category][group][b] = total_delta / counts[category]
    return {"blocks": [list(s) for s in spans], "groups": list(LAYER_GROUPS), "categories": table,
            "counts": counts, "items": len(used), "skipped": skipped, "complete": complete}


def layer_map_figure(result: dict) -> go.Figure:
    """Rows "category · group", columns the layer blocks; colour the mean Δ log p(gold) (nats, blue:
    the merge helps, red: it hurts)."""
    labels, z = [], []
    for category, groups in result["categories"].items():
        for group, values in groups.items():
            labels.append(f"{category} · {group}")
            z.append(values)
    columns = [f"L{a}" if a == b else f"L{a}–{b}" for a, b in result["blocks"]]
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=labels, colorscale="RdBu", zmid=0.0,
                               text=[[f"{v:+.2f}" if v is not None else "" for v in row] for row in z],
                               texttemplate="%{text}", colorbar={"title": "Δ ln p(gold)"},
                               hovertemplate="%{y}, %{x}: Δ ln p(gold) %{z:+.3f} nats<extra></extra>"))
    fig.update_layout(title=f"Merging one block at a time: mean change of ln p(gold) ({result['items']} items)",
                      yaxis={"autorange": "reversed"}, height=max(420, 22 * len(labels) + 160))
    return fig


def write_layer_map(result: dict, out: Path) -> None:
    """layers.json (the result) and layers.html (`layer_map_figure`) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    layer_map_figure(result).write_html(out / "layers.html", include_plotlyjs=True)
