"""Score a grid of plans on an eval set: the blog's Setting × Method × α table, reproducible.

A grid file (YAML):

    components:                     # named sets of plan components: which tensors merge (the blog's "Settings")
      Setting 1: [all]
      Setting 2: [self_attn]
    curves:                         # α-curve templates; α fills the preset's missing α parameter
      constant α: {preset: constant}               # value = α (the blog's "Method 1")
      linear ramp: {preset: linear, start: 0.0}    # end = α: a linear ramp up to α at the last layer
      log ramp: {preset: loglinear, start: 0.0}    # end = α: early layers near the VLM ("Method 3")
    alphas: [0.4, 0.5, 0.6]
    merge_method: linear            # optional (default linear), with optional params: {...}
    max_new_tokens: 64              # optional

Every (cell, item) answer goes through the answers cache, so a sweep killed half-way resumes where it
stopped, and cells computed by any earlier sweep or UI session come back at once. Answers are
generated in batches (`generate.answer_batch`). The base VLM (the empty plan) is always scored as the
baseline row. `merging.experiments.distributed` runs the same sweep on Ray workers (GPUs, machines).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go

from merging.errors import MergescopeError, PlanError
from merging.evals.eval_sets import EvalItem
from merging.evals.scoring import judge_both
from merging.evals.significance import mcnemar
from merging.evals.verdict import Verdict
from merging.limits import LimitError, bounded_int, brief, parse_document
from merging.plan.curves import PRESETS
from merging.plan.merge_plan import MergePlan
from merging.run.answerer import Answerer
from merging.run.generate import GenerationSettings

BASELINE = ("base VLM", "-", None)
FAILED = Verdict(None, False, "failed")  # an item that could not be asked: wrong by both scores
MAX_GRID_CELLS = 10_000  # the CLI's bound; the public demo passes its own, much smaller one


@dataclass(frozen=True)
class Cell:
    """One plan of a sweep grid: its setting (components), method (curve template) and α; the baseline has α None."""
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
    grid = _renamed_keys(parse_document(text, path), path)
    if not isinstance(grid, dict) or not all(k in grid for k in ("components", "curves", "alphas")):
        raise MergescopeError(f"{path}: a grid needs 'components', 'curves' and 'alphas'")
    for key, kind, example in (("components", dict, "{Setting 1: [all]}"), ("curves", dict, "{constant: {preset: "
                               "constant}}"), ("alphas", list, "[0.4, 0.6]")):
        if not isinstance(grid[key], kind) or not grid[key]:
            raise MergescopeError(f"{path}: '{key}' must be a non-empty {'mapping' if kind is dict else 'list'} "
                                  f"like {example}, got {brief(grid[key])}")
    count = 1 + len(grid["components"]) * len(grid["curves"]) * len(grid["alphas"])
    if count > max_cells:
        raise LimitError(f"{path}: {len(grid['components'])} component sets × {len(grid['curves'])} curves × "
                         f"{len(grid['alphas'])} alphas (+ baseline) = {count} cells; the limit is {max_cells}")
    cells = [Cell(*BASELINE, MergePlan())]
    for setting, components in grid["components"].items():
        for method, template in grid["curves"].items():
            for alpha in grid["alphas"]:
                rule = {"components": components, "method": grid.get("merge_method", "linear"),
                        "curve": _fill_alpha(template, alpha, f"{path}: curves.{method}"),
                        "params": grid.get("params", {})}
                try:
                    plan = MergePlan.from_dict({"rules": [rule]})
                except PlanError as exc:
                    raise MergescopeError(f"{path}: {setting} × {method} × α={brief(alpha, 40)}: {exc}") from None
                cells.append(Cell(setting, method, float(alpha), plan))
    tokens = bounded_int(grid.get("max_new_tokens", 64), f"{path}: max_new_tokens", 1, 4096)
    return cells, GenerationSettings(max_new_tokens=tokens)


RENAMED_KEYS = {"settings": "components", "methods": "curves"}  # old grid key → new (one word, one meaning)


def _renamed_keys(grid: object, path: str) -> object:
    """`grid` with the old keys under their new names, each with a FutureWarning (they still work)."""
    if not isinstance(grid, dict):
        return grid
    grid = dict(grid)
    for old, new in RENAMED_KEYS.items():
        if old in grid:
            if new in grid:
                raise MergescopeError(f"{path}: give '{new}' or the old name '{old}', not both")
            warnings.warn(f"{path}: the grid key '{old}' is now '{new}' ('{old}' still works, for now)",
                          FutureWarning, stacklevel=3)
            grid[new] = grid.pop(old)
    return grid


def _fill_alpha(template: dict, alpha: float, where: str) -> dict:
    if not isinstance(template, dict) or template.get("preset") not in PRESETS:
        raise MergescopeError(f"{where}: a curve template like {{preset: linear, start: 0.0}}, got {brief(template)}")
    kinds = PRESETS[template["preset"]].kinds
    open_keys = [k for k, kind in kinds.items() if kind == "alpha" and k not in template]
    if len(open_keys) != 1:
        raise MergescopeError(f"{where}: the template must leave exactly one α parameter open for the sweep "
                              f"(open now: {open_keys})")
    return {**template, open_keys[0]: alpha}


def run_sweep(answerer: Answerer, cells: list[Cell], items: list[EvalItem], settings: GenerationSettings,
              progress: Callable[[int, int], None] | None = None, donor: str | None = None,
              batch_size: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> list[dict]:
    """One result row per cell (see `cell_row`), merging with the answerer's `donor` (default: its own).

    Each cell's answers come from `Answerer.ask_many`: cached items are skipped, the rest generated
    in batches of `batch_size` and cached as each batch ends, so a killed sweep resumes where it was.
    `should_stop()` is asked between batches: once True, the sweep returns the rows it has, the last
    one partial (`complete` False). `progress(done, total)` counts answers.
    """
    rows, done, total = [], 0, len(cells) * len(items)
    requests = [(item.question, item.image) for item in items]  # images load per batch, never all at once
    for cell in cells:
        results: dict[int, dict] = {}
        for i, result in answerer.ask_many(cell.plan, requests, settings, donor, batch_size, should_stop):
            results[i] = result
            done += 1
            if progress:
                progress(done, total)
        rows.append(cell_row(cell, items, results, answerer.donor_name(donor)))
        if len(results) < len(items) or should_stop():
            break
    return add_flips(rows)


def add_flips(rows: list[dict]) -> list[dict]:
    """`rows` with each merged cell compared to the baseline row (the base VLM, α None) on the items both
    answered, by the strict score: "right_to_wrong" and "wrong_to_right" (the items' ids, in eval-set
    order) and "mcnemar_p", the exact McNemar p-value of the two (`merging.evals.significance.mcnemar`).
    The baseline row, and every row when there is none, gets None in all three. Returns `rows`."""
    base = next(({a["id"]: a["correct"] for a in r["answers"]} for r in rows if r["alpha"] is None), None)
    for row in rows:
        row.update(right_to_wrong=None, wrong_to_right=None, mcnemar_p=None)
        if base is None or row["alpha"] is None:
            continue
        shared = [a for a in row["answers"] if a["id"] in base]
        test = mcnemar([base[a["id"]] for a in shared], [a["correct"] for a in shared])
        row.update(right_to_wrong=[a["id"] for a in shared if base[a["id"]] and not a["correct"]],
                   wrong_to_right=[a["id"] for a in shared if a["correct"] and not base[a["id"]]],
                   mcnemar_p=test["p_value"])
    return rows


def cell_row(cell: Cell, items: list[EvalItem], results: dict[int, dict], donor: str) -> dict:
    """A sweep row: the cell, the donor, both scores with their Wilson 95 % intervals over the items
    answered (all of them unless the sweep was stopped: `complete`) — `accuracy` is the strict score,
    `official_accuracy` the benchmark's published rule chain (`merging.evals.scoring.judge`'s two modes) —,
    the same per category (`by_category`) and per benchmark group (`by_group`: dimension → value →
    scores, e.g. MathVista's task/skill/language, MATH-Vision's subject/level), and each answer. An
    item that failed (its result has "error", e.g. an unreadable image) is wrong by both scores, with
    rule "failed" and its error; `failed` counts them."""
    answers, by_category, by_group = [], {}, {}
    for i in sorted(results):
        item, result = items[i], results[i]
        error = result.get("error")
        verdicts = None if error else judge_both(result["answer"], item)
        strict, official = (verdicts["strict"], verdicts["official"]) if verdicts else (FAILED, FAILED)
        for tally in [by_category.setdefault(item.category or "all", [0, 0, 0])] + \
                [by_group.setdefault(d, {}).setdefault(v, [0, 0, 0]) for d, v in dict.fromkeys(item.groups)]:
            tally[0] += strict.correct
            tally[1] += official.correct
            tally[2] += 1
        answers.append({"id": item.id, "answer": result["answer"], "extracted": strict.extracted,
                        "correct": strict.correct, "rule": strict.rule, "official_extracted": official.extracted,
                        "official_correct": official.correct, "official_rule": official.rule,
                        "cached": result["cached"], **({"error": error} if error else {})})
    n = len(answers)
    computed = sum(not a["cached"] for a in answers)
    return {"setting": cell.setting, "method": cell.method, "alpha": cell.alpha, "donor": donor,
            "plan_hash": cell.plan.hash(), **_scores(sum(a["correct"] for a in answers),
                                                     sum(a["official_correct"] for a in answers), n, "accuracy_"),
            "items": len(items), "answered": n, "complete": n == len(items), "computed": computed,
            "cached": n - computed, "failed": sum("error" in a for a in answers),
            "by_category": {c: _scores(*t, "") for c, t in sorted(by_category.items())},
            "by_group": {d: {v: _scores(*t, "") for v, t in sorted(g.items())} for d, g in by_group.items()},
            "answers": answers}


def _scores(strict: int, official: int, n: int, prefix: str) -> dict:
    """Both accuracies of `n` answers with their Wilson intervals, keyed accuracy / {prefix}low / {prefix}high
    and official_accuracy / official_{prefix}low / official_{prefix}high (items: n)."""
    (low, high), (o_low, o_high) = wilson_interval(strict, n), wilson_interval(official, n)
    return {"accuracy": strict / n if n else 0.0, f"{prefix}low": low, f"{prefix}high": high,
            "official_accuracy": official / n if n else 0.0, f"official_{prefix}low": o_low,
            f"official_{prefix}high": o_high, "items": n}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of an accuracy `correct / n`; (0, 1) for n = 0. Written here:
    five lines, where statsmodels' proportion_confint would add a dependency for them."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def record_sweep(cache, rows: list[dict], grid: str, eval_set: str, planned: int | None = None) -> dict | None:
    """Remember a finished (or stopped) sweep in the answers cache as one entry of kind "sweep": its grid
    name, eval set, donor, answer counts, best cell, the settings, curves and α range its merged cells cover, and
    whether it is complete — every one of its `planned` cells (default: those in `rows`) answered every
    item — : what History lists, one row per sweep, in place of the sweep's individual answers. `cache`
    is an AnswerCache (or None: nothing stored). Returns the entry's configuration (None without rows)."""
    if not rows:
        return None
    best = max(rows, key=lambda r: r["accuracy"])
    alpha = "-" if best["alpha"] is None else f"{best['alpha']:g}"
    official = f", official {100 * best['official_accuracy']:.0f} %" if "official_accuracy" in best else ""
    config = {"kind": "sweep", "grid": grid, "eval_set": eval_set, "donor": rows[0]["donor"],
              "cells": [r["plan_hash"] for r in rows], "items": rows[0]["items"]}
    alphas = [r["alpha"] for r in rows if r["alpha"] is not None]
    if cache is not None:
        cache.put(config, {"best": f"{best['setting']} · {best['method']} · α {alpha}: "
                                   f"strict {100 * best['accuracy']:.0f} %{official}",
                           "answered": sum(r["answered"] for r in rows), "planned": planned or len(rows),
                           "complete": all(r["complete"] for r in rows) and len(rows) >= (planned or 0),
                           "settings": sorted({r["setting"] for r in rows if r["alpha"] is not None}),
                           "curves": sorted({r["method"] for r in rows if r["alpha"] is not None}),
                           "alphas": [min(alphas), max(alphas)] if alphas else None})
    return config


CSV_COLUMNS = {"setting": "setting", "method": "method", "alpha": "alpha", "donor": "donor",
               "strict_accuracy": "accuracy", "strict_low": "accuracy_low", "strict_high": "accuracy_high",
               "official_accuracy": "official_accuracy", "official_low": "official_accuracy_low",
               "official_high": "official_accuracy_high", "items": "items", "answered": "answered",
               "computed": "computed", "cached": "cached", "plan_hash": "plan_hash", "right_to_wrong": "right_to_wrong",
               "wrong_to_right": "wrong_to_right", "mcnemar_p": "mcnemar_p"}  # column: row key


def write_results(rows: list[dict], out: Path) -> None:
    """results.json (with per-item answers, both verdicts each), results.csv (one line per cell, both
    scores: strict_accuracy / official_accuracy with their Wilson bounds; right_to_wrong / wrong_to_right
    as counts and mcnemar_p, see `add_flips`) and heatmap.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows({column: _csv_value(r.get(key)) for column, key in CSV_COLUMNS.items()} for r in rows)
    heatmap(rows).write_html(out / "heatmap.html", include_plotlyjs=True)


def _csv_value(value):
    return len(value) if isinstance(value, list) else value  # the flipped items' count (their ids: results.json)


def heatmap(rows: list[dict]):
    """Setting × Method rows, α columns, the strict accuracy in percent (the official one and the flips on
    hover); a cell whose exact McNemar p-value against the base VLM is below 0.05 is marked "*" (rows
    with flips: `add_flips`); the baseline in the title."""
    merged = [r for r in rows if r["alpha"] is not None]
    labels = list(dict.fromkeys(f"{r['setting']} · {r['method']}" for r in merged))
    alphas = sorted({r["alpha"] for r in merged})
    z = [[None] * len(alphas) for _ in labels]
    official = [[None] * len(alphas) for _ in labels]
    text = [[""] * len(alphas) for _ in labels]
    for r in merged:
        at = labels.index(f"{r['setting']} · {r['method']}"), alphas.index(r["alpha"])
        z[at[0]][at[1]] = 100 * r["accuracy"]
        p = r.get("mcnemar_p")
        flips = "" if p is None else f" −{len(r['right_to_wrong'])}/+{len(r['wrong_to_right'])} p={p:.2g}"
        official[at[0]][at[1]] = f"{100 * r.get('official_accuracy', float('nan')):.1f} %{flips}"
        text[at[0]][at[1]] = f"{100 * r['accuracy']:.1f}" + ("*" if p is not None and p < 0.05 else "")
    base = next((100 * r["accuracy"] for r in rows if r["alpha"] is None), None)
    fig = go.Figure(go.Heatmap(z=z, x=[f"α={a:g}" for a in alphas], y=labels, colorscale="RdBu", zmid=base,
                               text=text, texttemplate="%{text}", colorbar={"title": "strict accuracy %"},
                               customdata=official,
                               hovertemplate="%{y}, %{x}: strict %{z:.1f} %, official %{customdata}"
                                             "<extra></extra>"))
    title = "Strict accuracy by setting, method and α" + (f" (base VLM: {base:.1f} %)" if base is not None else "") \
        + "; * McNemar p < 0.05"
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    return fig
