"""Score a grid of plans on an eval set: the blog's Setting × Method × α table, reproducible.

A grid file (YAML):

    settings:                       # which tensors merge (plan components)
      Setting 1: [all]
      Setting 2: [self_attn]
    methods:                        # α-curve templates; α fills the preset's missing α parameter
      Method 1: {preset: constant}               # value = α
      Method 2: {preset: linear, start: 0.0}     # end = α: a linear ramp up to α at the last layer
      Method 3: {preset: loglinear, start: 0.0}  # end = α: a log-scale ramp, early layers near the VLM
    alphas: [0.4, 0.5, 0.6]
    merge_method: linear            # optional (default linear), with optional params: {...}
    max_new_tokens: 64              # optional

Every (cell, item) answer goes through the answers cache, so a sweep killed half-way resumes where it
stopped, and cells computed by any earlier sweep or UI session come back at once. The base VLM (the
empty plan) is always scored as the baseline row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .curves import PRESETS
from .errors import MergescopeError, PlanError
from .evaluate import EvalItem, score
from .generate import GenerationSettings
from .limits import LimitError, bounded_int, brief, parse_document
from .plan import MergePlan
from .service import Answerer

BASELINE = ("base VLM", "-", None)
MAX_GRID_CELLS = 10_000  # the CLI's bound; the public demo passes its own, much smaller one


@dataclass(frozen=True)
class Cell:
    setting: str
    method: str
    alpha: float | None          # None for the baseline
    plan: MergePlan


def load_grid(path: str | Path) -> tuple[list[Cell], GenerationSettings]:
    """The grid file's cells (baseline first) and its generation settings (greedy)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MergescopeError(f"{path}: cannot read the grid ({exc.strerror})") from exc
    return parse_grid(text, str(path))


def parse_grid(text: str, path: str = "grid", max_cells: int = MAX_GRID_CELLS) -> tuple[list[Cell], GenerationSettings]:
    """Cells and generation settings of a grid given as YAML text (`path` names it in errors).

    The cell count is checked from the axes' lengths before any cell is built, against `max_cells`
    (the baseline included). Raises MergescopeError (LimitError for size, aliases, cells), one line.
    """
    grid = parse_document(text, path)
    if not isinstance(grid, dict) or not all(k in grid for k in ("settings", "methods", "alphas")):
        raise MergescopeError(f"{path}: a grid needs 'settings', 'methods' and 'alphas'")
    for key, kind, example in (("settings", dict, "{Setting 1: [all]}"), ("methods", dict, "{Method 1: {preset: "
                               "constant}}"), ("alphas", list, "[0.4, 0.6]")):
        if not isinstance(grid[key], kind) or not grid[key]:
            raise MergescopeError(f"{path}: '{key}' must be a non-empty {'mapping' if kind is dict else 'list'} "
                                  f"like {example}, got {brief(grid[key])}")
    count = 1 + len(grid["settings"]) * len(grid["methods"]) * len(grid["alphas"])
    if count > max_cells:
        raise LimitError(f"{path}: {len(grid['settings'])} settings × {len(grid['methods'])} methods × "
                         f"{len(grid['alphas'])} alphas (+ baseline) = {count} cells; the limit is {max_cells}")
    cells = [Cell(*BASELINE, MergePlan())]
    for setting, components in grid["settings"].items():
        for method, template in grid["methods"].items():
            for alpha in grid["alphas"]:
                rule = {"components": components, "method": grid.get("merge_method", "linear"),
                        "curve": _fill_alpha(template, alpha, f"{path}: methods.{method}"),
                        "params": grid.get("params", {})}
                try:
                    plan = MergePlan.from_dict({"rules": [rule]})
                except PlanError as exc:
                    raise MergescopeError(f"{path}: {setting} × {method} × α={brief(alpha, 40)}: {exc}") from None
                cells.append(Cell(setting, method, float(alpha), plan))
    tokens = bounded_int(grid.get("max_new_tokens", 64), f"{path}: max_new_tokens", 1, 4096)
    return cells, GenerationSettings(max_new_tokens=tokens)


def _fill_alpha(template: dict, alpha: float, where: str) -> dict:
    if not isinstance(template, dict) or template.get("preset") not in PRESETS:
        raise MergescopeError(f"{where}: a curve template like {{preset: linear, start: 0.0}}, got {brief(template)}")
    _, kinds = PRESETS[template["preset"]]
    open_keys = [k for k, kind in kinds.items() if kind == "alpha" and k not in template]
    if len(open_keys) != 1:
        raise MergescopeError(f"{where}: the template must leave exactly one α parameter open for the sweep "
                              f"(open now: {open_keys})")
    return {**template, open_keys[0]: alpha}


def run_sweep(answerer: Answerer, cells: list[Cell], items: list[EvalItem], settings: GenerationSettings,
              progress: Callable[[int, int], None] | None = None, donor: str | None = None) -> list[dict]:
    """One result row per cell: accuracy, and how many answers were computed vs served from cache
    (merging with the answerer's `donor`, by default its own)."""
    rows, done, total = [], 0, len(cells) * len(items)
    for cell in cells:
        correct = computed = 0
        answers = []
        for item in items:
            result = answerer.ask(cell.plan, item.question, item.image(), settings, donor=donor)
            extracted, ok = score(result["answer"], item)
            correct += ok
            computed += not result["cached"]
            answers.append({"id": item.id, "answer": result["answer"], "extracted": extracted, "correct": ok})
            done += 1
            if progress:
                progress(done, total)
        rows.append({"setting": cell.setting, "method": cell.method, "alpha": cell.alpha,
                     "plan_hash": cell.plan.hash(), "accuracy": correct / len(items), "items": len(items),
                     "computed": computed, "cached": len(items) - computed, "answers": answers})
    return rows


def write_results(rows: list[dict], out: Path) -> None:
    """results.json (with per-item answers), results.csv and heatmap.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    fields = ["setting", "method", "alpha", "accuracy", "items", "computed", "cached", "plan_hash"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    heatmap(rows).write_html(out / "heatmap.html", include_plotlyjs=True)


def heatmap(rows: list[dict]):
    """Setting × Method rows, α columns, accuracy in percent; the baseline in the title."""
    import plotly.graph_objects as go
    merged = [r for r in rows if r["alpha"] is not None]
    labels = list(dict.fromkeys(f"{r['setting']} · {r['method']}" for r in merged))
    alphas = sorted({r["alpha"] for r in merged})
    z = [[None] * len(alphas) for _ in labels]
    for r in merged:
        z[labels.index(f"{r['setting']} · {r['method']}")][alphas.index(r["alpha"])] = 100 * r["accuracy"]
    base = next((100 * r["accuracy"] for r in rows if r["alpha"] is None), None)
    fig = go.Figure(go.Heatmap(z=z, x=[f"α={a:g}" for a in alphas], y=labels, colorscale="RdBu", zmid=base,
                               text=[[f"{v:.1f}" if v is not None else "" for v in row] for row in z],
                               texttemplate="%{text}", colorbar={"title": "accuracy %"}))
    title = "Accuracy by setting, method and α" + (f" (base VLM: {base:.1f} %)" if base is not None else "")
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    return fig
