"""Search benchmark on the shipped toy pair: what a trial costs, where the time goes, what a cheap fitness is worth.

Prints ONE JSON object to stdout (logs go to stderr):

- trials, trials_per_s            a seeded TPE search (accuracy fitness, successive halving) of TRIALS trials
- apply_s_median, eval_s_median   per trial: the in-place apply, and scoring its dev items
- apply_fraction                  apply / (apply + evaluation), medians                  target ≤ 0.05
- rebuild_s                       merge-to-checkpoint-and-load for one candidate (switch.py's `rebuild`)
- candidate_s_inplace, candidate_s_rebuild   apply + evaluation vs rebuild + evaluation per candidate
- items_pruned, items_unpruned    dev items scored with and without pruning at the same budget and seed
- accuracy_s_per_trial, gold_logprob_s_per_trial   uncached fitness of the same plans on the whole dev split
- spearman_gold_logprob_vs_accuracy   rank correlation of the two fitnesses over those plans (scipy)
- best_dev, best_test             the pruned search's best trial: dev objective, test accuracy (mean over the
                                  seven skills) with its Wilson interval; base_test, grid_best_test likewise
                                  (the grid: examples/toy_grid.yaml, its best cell chosen on dev)

Run (after `pip install -e .`): python benchmarks/search.py [--trials 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from scipy.stats import spearmanr

from cache import AnswerCache
from merging.run.answerer import Answerer
from merging.engine.merge_engine import MergeEngine
from merging.evals.eval_sets import load_eval_set
from merging.run.generate import GenerationSettings
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_SEED, TOY_VLM
from merging.model.pair import load_pair
from merging.experiments.search import STUDY_FILE, STUDY_NAME, SearchOptions, item_scores, objective_values, split_items
from merging.experiments.search_report import plan_of, run_search
from merging.experiments.search_space import parse_space
from merging.experiments.sweep import load_grid
from switch import rebuild  # the same checkpoint workflow the switch benchmark times

REPO = Path(__file__).resolve().parents[1]
SPACE = """groups:
  attention: {anchors: 3, range: [0.0, 1.0]}
  mlp: {anchors: 3, range: [0.0, 1.0]}
  norms: {anchors: 2, range: [0.0, 1.0]}
  embeddings_head: {anchors: 1, range: [0.0, 1.0]}
objectives:
  skills: [count, colour, shape, position, arith, text_count, text_plus]
max_new_tokens: 8
"""


def log(msg: str) -> None:
    print(f"[search] {msg}", file=sys.stderr, flush=True)


def figure(entry: dict) -> dict:
    skills = entry["objectives"]["skills"]
    return {"accuracy": skills["accuracy"], "low": skills["low"], "high": skills["high"]}


def fitness_comparison(engine: MergeEngine, plans: list, dev: list, space) -> dict:
    """Uncached seconds per trial of each fitness on the whole dev split, and their Spearman correlation."""
    answerer = Answerer(engine)  # no cache: every figure is computed
    settings = GenerationSettings(max_new_tokens=space.max_new_tokens)
    seconds, values = {"accuracy": [], "gold_logprob": []}, {"accuracy": [], "gold_logprob": []}
    for plan in plans:
        for fitness in values:
            begin = time.perf_counter()
            scores = item_scores(answerer, plan, dev, fitness, settings)["scores"]
            seconds[fitness].append(time.perf_counter() - begin)
            values[fitness].append(objective_values(space, dev, scores)[0])
    rho = spearmanr(values["accuracy"], values["gold_logprob"]).statistic
    return {"accuracy_s_per_trial": statistics.median(seconds["accuracy"]),
            "gold_logprob_s_per_trial": statistics.median(seconds["gold_logprob"]),
            "spearman_gold_logprob_vs_accuracy": float(rho), "fitness_plans": len(plans)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--fitness-plans", type=int, default=16, help="plans scored by both fitnesses")
    args = parser.parse_args()
    space = parse_space(SPACE)
    items = load_eval_set(TOY_EVAL)
    engine = MergeEngine(load_pair(TOY_VLM, TOY_LLM, TOY_SEED, dtype="float32"))
    grid = load_grid(REPO / "examples" / "toy_grid.yaml")[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        answerer = Answerer(engine, AnswerCache(root / "cache"))
        options = SearchOptions(trials=args.trials, seed=0)
        begin = time.perf_counter()
        pruned = run_search(answerer, SPACE, space, items, root / "pruned", options, "toy", grid=grid)
        log(f"pruned search: {time.perf_counter() - begin:.1f}s (report included)")
        study = optuna_study(root / "pruned")
        done = [t for t in study.trials if "apply_seconds" in t.user_attrs]
        search_s = sum(t.user_attrs["apply_seconds"] + t.user_attrs["eval_seconds"] for t in done)
        apply_s = statistics.median(t.user_attrs["apply_seconds"] for t in done)
        eval_s = statistics.median(t.user_attrs["eval_seconds"] for t in done)
        unpruned = run_search(answerer, SPACE, space, items, root / "full",
                              SearchOptions(trials=args.trials, seed=0, pruning=False), "toy")
        log("unpruned search done")
        dev, _ = split_items(items, options.test_fraction, options.seed)
        plans = [plan_of(t) for t in optuna_study(root / "full").trials[:args.fitness_plans]]
        fitness = fitness_comparison(engine, plans, dev, space)
        log(f"fitness comparison: {fitness}")
        rebuild_s, _ = rebuild(engine.pair, TOY_VLM, TOY_LLM, root / "rebuilt", lambda: None)
    print(json.dumps({
        "trials": len(done), "trials_per_s": len(done) / search_s, "apply_s_median": apply_s, "eval_s_median": eval_s,
        "apply_fraction": apply_s / (apply_s + eval_s), "rebuild_s": rebuild_s,
        "candidate_s_inplace": apply_s + eval_s, "candidate_s_rebuild": rebuild_s + eval_s,
        "items_pruned": pruned["items_used"], "items_unpruned": unpruned["items_used"], **fitness,
        "best_dev": pruned["best"]["dev"][0], "best_test": figure(pruned["best"]), "base_test": figure(pruned["base"]),
        "grid_best_test": dict(figure(pruned["grid_best"]), cell=[pruned["grid_best"][k] for k in
                                                                  ("setting", "curve", "alpha")]),
        "best_vs_base_p": pruned["best"]["vs_base"]["p_value"], "torch_threads": torch.get_num_threads(),
    }))


def optuna_study(folder: Path) -> optuna.Study:
    """The study a search wrote in `folder`."""
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / STUDY_FILE}")


if __name__ == "__main__":
    main()
