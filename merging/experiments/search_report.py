"""What a finished search found, in numbers people can trust: the best trial (or the Pareto front) chosen
on dev, scored on the held-out test split with Wilson 95 % intervals and exact McNemar tests against
the base VLM (and the best cell of a grid) on the same items; and the files of the output folder.

    trials.csv         a row per trial: parameters, objective(s), items used, state, apply/eval seconds
    best_plan.yaml     the chosen plan (`mergescope answer/export --plan` accept it)
    best_mergekit.yaml the same as a mergekit configuration, where mergekit can express it
    report.json        dev and test figures, intervals, p-values, the front
    search.html        objective per trial with best-so-far, the Pareto scatter, the best plan's curves
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from merging.plan import curves
from merging.run.answerer import Answerer
from merging.evals.eval_sets import EvalItem
from merging.run.generate import GenerationSettings
from merging.export.mergekit_config import MergekitUnsupported, mergekit_yaml
from merging.plan.merge_plan import MergePlan
from merging.experiments.search import (INTERRUPTED, Evaluator, LocalEvaluator, SearchOptions, check_objectives,
    item_scores, objective_values, open_study, run_study, split_items)
from merging.experiments.search_space import SearchSpace
from merging.evals.significance import mcnemar
from merging.experiments.sweep import Cell, wilson_interval

COMPLETE = optuna.trial.TrialState.COMPLETE


def front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other complete trial dominates on dev (one objective: the best ones)."""
    return sorted(study.best_trials, key=lambda t: t.number)


def chosen(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    """The trial the report calls best: the highest mean over its objectives (one objective: its value),
    the earliest on ties."""
    return max(trials, key=lambda t: (sum(t.values) / len(t.values), -t.number))


def plan_of(trial: optuna.trial.FrozenTrial) -> MergePlan:
    """The plan a trial scored (stored by `search.run_study`)."""
    return MergePlan.from_text(trial.user_attrs["plan"])


def test_figures(answerer: Answerer, plan: MergePlan, test: list[EvalItem], space: SearchSpace,
                 settings: GenerationSettings, batch_size: int | None = None) -> dict[str, Any]:
    """Accuracy of `plan` on `test` (always accuracy: the honest figure, whatever the search's fitness)
    by the strict judge — overall, per objective and per category, each {accuracy, low, high, items}
    with its Wilson 95 % interval, the macro mean over the categories the objectives name (every category when one
    objective takes all items) — the overall accuracy by the benchmark's official rule chain
    ("official", `scoring.judge_both`), and the per-item strict verdicts ("correct", for McNemar)."""
    scored = item_scores(answerer, plan, test, "accuracy", settings, batch_size)
    correct = [s == 1.0 for s in scored["scores"]]

    def figure(mask: list[bool], verdicts: list[bool] = correct) -> dict[str, Any]:
        k, n = sum(c for c, m in zip(verdicts, mask) if m), sum(mask)
        low, high = wilson_interval(k, n)
        return {"accuracy": k / n if n else 0.0, "low": low, "high": high, "items": n}

    categories = sorted({str(item.category) for item in test})
    per_category = {c: figure([str(item.category) == c for item in test]) for c in categories}
    objectives = {name: figure([cats is None or item.category in cats for item in test])
                  for name, cats in space.objectives}
    named = None if any(cats is None for _, cats in space.objectives) else \
        {c for _, cats in space.objectives for c in cats}
    counted = [f["accuracy"] for c, f in per_category.items() if named is None or c in named]
    official = [s == 1.0 for s in scored["official"]]
    return {"overall": figure([True] * len(test)), "objectives": objectives, "categories": per_category,
            "macro_mean": sum(counted) / len(counted), "official": figure([True] * len(test), official),
            "correct": correct}


def best_grid_cell(answerer: Answerer, cells: list[Cell], dev: list[EvalItem], space: SearchSpace,
                   fitness: str, settings: GenerationSettings, batch_size: int | None = None) -> tuple[Cell, list]:
    """The grid cell (baseline excluded) a search would choose on dev by the same rule as `chosen`, and
    its objective values; every cell is scored through the answers cache."""
    scored = []
    for cell in cells:
        if cell.alpha is None:
            continue
        scores = item_scores(answerer, cell.plan, dev, fitness, settings, batch_size)["scores"]
        values = objective_values(space, dev, scores)
        scored.append((sum(values) / len(values), cell, values))
    _, cell, values = max(scored, key=lambda s: s[0])
    return cell, values


def build_report(study: optuna.Study, answerer: Answerer, space: SearchSpace, dev: list[EvalItem],
                 test: list[EvalItem], settings: GenerationSettings, fitness: str,
                 grid: list[Cell] | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """report.json's contents: the chosen trial and the front (dev values, test figures, McNemar p-values
    against the base VLM, and against the best grid cell when `grid` is given), the base VLM's and the
    grid cell's test figures, and counts of trials by state. MergescopeError-free: a study without a
    complete trial gives {"best": None}."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s and not t.user_attrs.get(INTERRUPTED) for t in trials)
              for s in optuna.trial.TrialState}
    states["interrupted"] = sum(bool(t.user_attrs.get(INTERRUPTED)) for t in trials)
    report: dict[str, Any] = {"objectives": space.objective_names, "fitness": fitness, "trials": states,
                              "dev_items": len(dev), "test_items": len(test),
                              "items_used": sum(t.user_attrs.get("items", 0) for t in trials)}
    if not any(t.state == COMPLETE for t in trials):
        return dict(report, best=None, front=[])
    base = test_figures(answerer, MergePlan(), test, space, settings, batch_size)
    report["base"] = _public(base)
    reference = None
    if grid:
        cell, values = best_grid_cell(answerer, grid, dev, space, fitness, settings, batch_size)
        reference = test_figures(answerer, cell.plan, test, space, settings, batch_size)
        report["grid_best"] = dict(_public(reference), setting=cell.setting, curve=cell.method, alpha=cell.alpha,
                                   dev=values, vs_base=mcnemar(reference["correct"], base["correct"]),
                                   plan=cell.plan.to_dict())
    entries, members = [], front(study)
    for trial in members:
        figures = test_figures(answerer, plan_of(trial), test, space, settings, batch_size)
        entry = dict(_public(figures), trial=trial.number, dev=list(trial.values), params=trial.params,
                     vs_base=mcnemar(figures["correct"], base["correct"]))
        if reference is not None:
            entry["vs_grid_best"] = mcnemar(figures["correct"], reference["correct"])
        entries.append(entry)
    best = chosen(members)
    report["front"] = entries
    report["best"] = next(e for e in entries if e["trial"] == best.number)
    return report


def _public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "correct"}


# -- files -----------------------------------------------------------------------------------------
def write_trials_csv(study: optuna.Study, space: SearchSpace, path: Path) -> None:
    """trials.csv: number, state, each objective, items, seconds, plan hash, then every parameter."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for t in trials for name in t.params})
    fields = ["number", "state", *space.objective_names, "items", "apply_seconds", "eval_seconds", "plan_hash",
              *params]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for t in trials:
            values = t.values or t.user_attrs.get("values_at_end") or [None] * len(space.objective_names)
            plan = t.user_attrs.get("plan")
            writer.writerow({"number": t.number, "state": t.state.name.lower(),
                             **dict(zip(space.objective_names, values)), "items": t.user_attrs.get("items", 0),
                             "apply_seconds": t.user_attrs.get("apply_seconds"),
                             "eval_seconds": t.user_attrs.get("eval_seconds"),
                             "plan_hash": MergePlan.from_text(plan).hash() if plan else None, **t.params})


def write_outputs(study: optuna.Study, space: SearchSpace, report: dict, pair, out: Path) -> list[str]:
    """Write trials.csv, report.json, search.html and (with a best trial) best_plan.yaml and, where
    mergekit can express it, best_mergekit.yaml (else report["mergekit"] says why). Returns the names."""
    write_trials_csv(study, space, out / "trials.csv")
    names = ["trials.csv", "report.json", "search.html"]
    best_plan = None
    if report.get("best") is not None:
        best_plan = plan_of(study.trials[report["best"]["trial"]])
        (out / "best_plan.yaml").write_text(best_plan.to_yaml())
        names.insert(1, "best_plan.yaml")
        try:
            (out / "best_mergekit.yaml").write_text(mergekit_yaml(best_plan, pair))
            report["mergekit"] = "best_mergekit.yaml"
            names.insert(2, "best_mergekit.yaml")
        except MergekitUnsupported as exc:
            report["mergekit"] = f"not written: {exc}"
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    search_figure(study, space, best_plan, pair.layout.num_layers).write_html(out / "search.html",
                                                                               include_plotlyjs=True)
    return names


def search_figure(study: optuna.Study, space: SearchSpace, best_plan: MergePlan | None, num_layers: int) -> go.Figure:
    """Three panels: the first objective per trial (pruned trials at their last rung) with the best so far,
    the two objectives of complete trials with the Pareto front (one objective: the items each trial
    used), and the best plan's α per layer for each of its rules."""
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=(f"{space.objective_names[0]} by trial", _middle(space), "best plan's α"))
    trials = [t for t in study.get_trials(deepcopy=False) if t.values or t.user_attrs.get("values_at_end")]
    xs = [t.number for t in trials]
    ys = [(t.values or t.user_attrs["values_at_end"])[0] for t in trials]
    colours = ["#1f77b4" if t.state == COMPLETE else "#bbbbbb" for t in trials]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker={"color": colours}, name="trial"), 1, 1)
    best, running = [], float("-inf")
    for t, y in zip(trials, ys):
        running = max(running, y) if t.state == COMPLETE else running
        best.append(running if running > float("-inf") else None)
    fig.add_trace(go.Scatter(x=xs, y=best, mode="lines", name="best so far"), 1, 1)
    complete = [t for t in trials if t.state == COMPLETE]
    if len(space.objectives) == 2:
        on_front = {t.number for t in study.best_trials}
        fig.add_trace(go.Scatter(x=[t.values[0] for t in complete], y=[t.values[1] for t in complete],
                                 mode="markers", text=[f"trial {t.number}" for t in complete],
                                 marker={"color": ["#d62728" if t.number in on_front else "#1f77b4" for t in complete]},
                                 name="Pareto front (red)"), 1, 2)
    else:
        fig.add_trace(go.Bar(x=xs, y=[t.user_attrs.get("items", 0) for t in trials], name="items used"), 1, 2)
    for i, rule in enumerate(best_plan.rules if best_plan else ()):
        fig.add_trace(go.Scatter(x=list(range(num_layers)), y=curves.layer_alphas(rule.curve, num_layers),
                                 mode="lines+markers", name=f"{'+'.join(rule.components)} ({rule.method})"), 1, 3)
    fig.update_yaxes(range=[0, 1], row=1, col=3)
    fig.update_xaxes(title_text="trial", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=3)
    fig.update_layout(height=480, margin={"t": 40, "l": 40, "r": 20},
                      legend={"orientation": "h", "y": -0.18, "x": 0})  # below: narrow screens keep the plots
    return fig


def _middle(space: SearchSpace) -> str:
    names = space.objective_names
    return f"{names[1]} vs {names[0]}: front in red" if len(names) == 2 else "items used per trial"


def run_search(answerer: Answerer, space_text: str, space: SearchSpace, items: list[EvalItem], out: Path,
               options: SearchOptions, eval_set: str, resume: bool = False, grid: list[Cell] | None = None,
               evaluator: Evaluator | None = None, progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """The whole search: split `items` (dev/test), open or resume the study in `out`, run trials on
    `evaluator` (default: this process), then score the chosen trial, the front, the base VLM and the
    grid's best cell on test and write the output folder. Returns report.json's contents plus "files"
    and "ran" (trials finished by this call). A stopped search (`should_stop`) still reports what it has.
    Raises MergescopeError for bad options, an objective naming absent categories, or a study mismatch."""
    options.check(len(space.objectives))
    check_objectives(space, items, "objectives")
    dev, test = split_items(items, options.test_fraction, options.seed)
    study = open_study(out, space_text, space, options, eval_set, resume)
    settings = GenerationSettings(max_new_tokens=space.max_new_tokens)
    evaluator = evaluator or LocalEvaluator(answerer, options.fitness, settings, options.batch_size)
    try:
        ran = run_study(study, space, dev, evaluator, options, progress, should_stop)
    finally:
        evaluator.close()
    report = build_report(study, answerer, space, dev, test, settings, options.fitness, grid, options.batch_size)
    report["ran"] = ran
    report["files"] = write_outputs(study, space, report, answerer.engine.pair, out)
    return report
