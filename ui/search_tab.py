"""The Search tab: an Optuna study over the space's curves on the resident engine, live, stoppable, resumable.

One study folder per configuration (space, fitness, sampler, seed, items) under `Explorer.search_dir`,
so *Start* after *Stop* (or after a restart of the app) resumes the same study; a larger budget
continues it. The trials run one at a time in the model queue, the page updating after each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import gradio as gr
import optuna
import pandas as pd

from merging.errors import MergescopeError
from merging.evals.eval_sets import sample_items
from merging.run.generate import GenerationSettings
from merging.limits import bounded_int
from merging.experiments.search import (SAMPLERS, STUDY_FILE, LocalEvaluator, SearchOptions, check_objectives,
                                        finished_trials, open_study, run_study, split_items)
from merging.experiments.search_report import build_report, chosen, front, plan_of, search_figure, write_outputs
from merging.experiments.search_space import SearchSpace, parse_space

from .explorer import CHEAP, GPU, PUBLIC_MAX_SEARCH_ITEMS, PUBLIC_MAX_SEARCH_TRIALS, Explorer, bind
from .panel import CURVE_GROUPS
from .open_plan import editor_outputs, editor_values
from .stops import Stops

DEFAULT_SAMPLER = "default (TPE; NSGA-II for two objectives)"
TOY_OBJECTIVES = """objectives:
  perception: [count, colour, shape, position]
  text: [arith, text_count, text_plus]
"""


def default_space(explorer: Explorer) -> str:
    """A space for the loaded model: 3 anchors for attention and MLP, 2 for norms; the toy pair's two
    objectives when the eval set has its kinds."""
    text = ("groups:\n  attention: {anchors: 3, range: [0.0, 1.0]}\n  mlp: {anchors: 3, range: [0.0, 1.0]}\n"
            "  norms: {anchors: 2, range: [0.0, 1.0]}\n")
    kinds = {item.category for item in explorer.eval_items}
    return text + (TOY_OBJECTIVES if {"colour", "text_plus"} <= kinds else "") + "max_new_tokens: 8\n"


def search_setup(explorer: Explorer, space_text, fitness, sampler, trials, max_items, seed):
    """(space, options, items, folder) for the tab's fields; MergescopeError (one line) for bad ones or
    what a public demo caps."""
    space = parse_space(space_text or "", "space")
    top_trials = PUBLIC_MAX_SEARCH_TRIALS if explorer.public else 10_000
    top_items = PUBLIC_MAX_SEARCH_ITEMS if explorer.public else 1_000_000
    options = SearchOptions(fitness=fitness, sampler=None if sampler in (None, DEFAULT_SAMPLER) else sampler,
                            seed=bounded_int(seed or 0, "seed", 0, 2**31 - 1),
                            trials=bounded_int(trials or 1, "trials", 1, top_trials), min_items=8)
    options.check(len(space.objectives))
    if not explorer.eval_items:
        raise MergescopeError("no eval set is loaded: start the app with --eval-set")
    n = bounded_int(max_items or 2, "items (max)", 2, top_items)
    items = sample_items(explorer.eval_items, n, options.seed)
    check_objectives(space, items, "objectives")
    identity = json.dumps([space_text, options.fitness, options.sampler, options.seed, explorer.eval_spec, len(items)])
    folder = explorer.search_dir / f"study-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    return space, options, items, folder


def trials_table(study: optuna.Study, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: number, state, objective values (at the last rung for pruned ones), items."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or t.user_attrs.get("values_at_end") or [None] * len(space.objectives)
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     **{n: None if v is None else round(v, 4) for n, v in zip(space.objective_names, values)},
                     "items": t.user_attrs.get("items", 0)})
    return pd.DataFrame(rows)


STOPS = Stops("Stopping after the current trial…")  # read between trials


def on_search(explorer: Explorer, space_text, fitness, sampler, trials, max_items, seed, request: gr.Request = None):
    """Streams (status, figure, trials table, study folder, trial to open) after each trial; Stop ends it
    between trials and keeps the study (Start again resumes). A finished budget adds the test-split
    report and puts its best trial in the trial box."""
    keep = gr.update()
    try:
        explorer.admit(request)
        space, options, items, folder = search_setup(explorer, space_text, fitness, sampler, trials, max_items, seed)
        dev, test = split_items(items, options.test_fraction, options.seed)
        study = open_study(folder, space_text, space, options, explorer.eval_spec, (folder / STUDY_FILE).exists())
    except MergescopeError as exc:
        yield f"⚠️ {exc}", keep, keep, keep, keep
        return
    stop = STOPS.start(request)
    settings = GenerationSettings(max_new_tokens=space.max_new_tokens)
    evaluator = LocalEvaluator(explorer.answerer, options.fitness, settings, options.batch_size)
    layers = explorer.num_layers
    try:
        while (done := len(finished_trials(study))) < options.trials and not stop.is_set():
            run_study(study, space, dev, evaluator, replace(options, trials=done + 1), should_stop=stop.is_set)
            yield (f"Search: {done + 1} / {options.trials} trials", search_figure(study, space, _best(study), layers),
                   trials_table(study, space), str(folder), keep)
        if stop.is_set():
            yield (f"Search stopped at {len(finished_trials(study))} / {options.trials} trials; Start resumes it",
                   keep, keep, str(folder), keep)
            return
        report = build_report(study, explorer.answerer, space, dev, test, settings, options.fitness)
        write_outputs(study, space, report, explorer.engine.pair, folder)
        figure = search_figure(study, space, _best(study), layers)
        best = report["best"]["trial"] if report.get("best") else keep
        yield _summary(report), figure, trials_table(study, space), str(folder), best
    except MergescopeError as exc:
        yield f"⚠️ {exc}", keep, keep, str(folder), keep
    finally:
        STOPS.end(request, stop)


def _best(study: optuna.Study):
    """The plan the report would call best so far (None before a trial completes)."""
    done = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return plan_of(chosen(front(study))) if done else None


def _summary(report: dict) -> str:
    best = report.get("best")
    if best is None:
        return "Search done: no trial completed"
    base = report["base"]["objectives"]
    shown = "; ".join(f"{n} {100 * f['accuracy']:.0f} % (base {100 * base[n]['accuracy']:.0f} %)"
                      for n, f in best["objectives"].items())
    return (f"Search done: best trial {best['trial']} on {report['test_items']} held-out items (strict score): "
            f"{shown}; official score {100 * best['official']['accuracy']:.0f} % "
            f"(base {100 * report['base']['official']['accuracy']:.0f} %); "
            f"McNemar vs base p = {best['vs_base']['p_value']:.3g}")


def on_open_trial(explorer: Explorer, folder, number):
    """The Compare editor's values for trial `number` of the study in `folder`: separate curves when its
    rules are the editor's groups with one method, else the first rule in the linked editor."""
    skip = [gr.update()] * (3 + len(CURVE_GROUPS) + 3)
    try:
        path = Path(folder or "") / STUDY_FILE
        if not folder or not path.is_file() or path.resolve().parent.parent != explorer.search_dir.resolve():
            raise MergescopeError("run a search first (Start), then open one of its trials")
        study = optuna.load_study(study_name="mergescope-search", storage=f"sqlite:///{path}")
        n = bounded_int(number, "trial", 0, len(study.trials) - 1)
        if "plan" not in study.trials[n].user_attrs:
            raise MergescopeError(f"trial {n} has no plan (it failed before one was drawn)")
        plan = plan_of(study.trials[n])
    except MergescopeError as exc:
        return skip[:-1] + [f"⚠️ {exc}"]
    return editor_values(explorer, plan, f"Opened search trial {n} (plan `{plan.hash()}`)")


def build_search_tab(explorer: Explorer, compare) -> None:
    gr.Markdown("Search the curve space for the best plan on the eval set's dev split (Optuna; every answer "
                "cached). *Stop* keeps the study; *Start* resumes it. The held-out half scores the winner.")
    space = gr.Code(default_space(explorer), language="yaml", label="Search space", elem_id="search-space")
    with gr.Row():
        fitness = gr.Dropdown(["accuracy", "gold_logprob"], value="accuracy", label="Fitness", elem_id="search-fitness")
        sampler = gr.Dropdown([DEFAULT_SAMPLER, *SAMPLERS], value=DEFAULT_SAMPLER, label="Sampler",
                              elem_id="search-sampler")
        trials = gr.Number(12 if not explorer.public else 8, label="Trials", precision=0, minimum=1,
                           elem_id="search-trials")
        items = gr.Number(32, label="Items (dev + test)", precision=0, minimum=2, elem_id="search-items")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="search-seed")
    with gr.Row():
        start = gr.Button("Start search", variant="primary", elem_id="start-search")
        stop = gr.Button("Stop", elem_id="stop-search")
    status = gr.Markdown("", elem_id="search-status")
    figure = gr.Plot(label="Trials, front and the best plan's curves", elem_id="search-plot")
    table = gr.Dataframe(label="Trials", elem_id="search-trials-table")
    folder = gr.State("")
    with gr.Row(equal_height=True):
        trial = gr.Number(0, label="Trial", precision=0, minimum=0, elem_id="search-trial")
        open_button = gr.Button("Open in Compare", elem_id="open-trial")
    start.click(bind(on_search, explorer), [space, fitness, sampler, trials, items, seed],
                [status, figure, table, folder, trial], api_name="on_search", **GPU)
    stop.click(STOPS.stop, None, status, **CHEAP)
    open_button.click(bind(on_open_trial, explorer), [folder, trial], editor_outputs(compare), **CHEAP)
