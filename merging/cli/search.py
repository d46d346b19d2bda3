"""`mergescope search`: its options, the run, and the lines it prints (see merging/experiments/search.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from cache import AnswerCache
from merging.cli.args import natural, pair_args, positive, stack_of, text
from merging.evals.eval_sets import load_eval_set
from merging.experiments.search import SearchOptions, check_study_path
from merging.experiments.search_ray import RayEvaluator
from merging.experiments.search_report import run_search
from merging.experiments.search_space import load_space
from merging.experiments.sweep import load_grid
from merging.run.stack import model_spec


def search_parser(sub) -> None:
    """The `search` command's options."""
    search = sub.add_parser("search", help="search the curve space for the best plan (Optuna; resumable, cached)")
    pair_args(search)
    search.add_argument("--space", required=True, type=text,
                        help="search space YAML (see merging/experiments/search_space.py)")
    search.add_argument("--eval-set", required=True, type=text, help="PATH.jsonl, mathvista:PATH or mathvision:PATH")
    search.add_argument("--trials", type=positive, default=50, help="finished trials in the study (default 50)")
    search.add_argument("--out", required=True, type=text,
                        help="folder for study.db, trials.csv, best_plan.yaml, report.json")
    search.add_argument("--objective", default="accuracy", help="fitness: accuracy (generation, judged) or "
                                                                 "gold_logprob (teacher-forced, no generation)")
    search.add_argument("--sampler", help="tpe (default), cmaes, nsga2 (default for two objectives) or random")
    search.add_argument("--seed", type=natural, default=0, help="seeds the sampler and the dev/test split")
    search.add_argument("--resume", action="store_true", help="continue the study in --out")
    search.add_argument("--test-fraction", type=float, default=0.5, help="held-out share of items (default 0.5)")
    search.add_argument("--no-pruning", action="store_true", help="score every trial on the whole dev split")
    search.add_argument("--min-items", type=positive, default=16, help="dev items of the first successive-halving rung")
    search.add_argument("--compare-grid", help="a sweep grid whose best cell (chosen on dev) the report compares")
    search.add_argument("--cache-dir", help="answers cache (default: OUT/cache)")
    search.add_argument("--batch-size", type=positive, help="answers per generate call (default: by model size)")
    search.add_argument("--workers", type=positive, help="score trials on N Ray workers of a local cluster")
    search.add_argument("--ray", metavar="ADDRESS", help="join a running Ray cluster")


def cmd_search(args) -> dict:
    """Search the space for the best plan on the eval set's dev split; write the output folder."""



    space = load_space(args.space)  # bad files and options fail before the model is loaded
    options = SearchOptions(fitness=args.objective, sampler=args.sampler, seed=args.seed, trials=args.trials,
                            pruning=not args.no_pruning, min_items=args.min_items, test_fraction=args.test_fraction,
                            batch_size=args.batch_size)
    options.check(len(space.objectives))
    grid = load_grid(args.compare_grid)[0] if args.compare_grid else None
    items = load_eval_set(args.eval_set)
    out = Path(args.out)
    check_study_path(out, args.resume)
    cache = AnswerCache(args.cache_dir or out / "cache")
    answerer = stack_of(args, cache).answerer
    evaluator = None
    if args.workers or args.ray:
        evaluator = RayEvaluator(model_spec(args), options.fitness, space.max_new_tokens, str(cache.directory),
                                 workers=args.workers, address=args.ray, batch_size=args.batch_size)
    with tqdm(total=options.trials, desc="search", unit="trial", file=sys.stderr, disable=args.json) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
        report = run_search(answerer, Path(args.space).read_text(), space, items, out, options, args.eval_set,
                            resume=args.resume, grid=grid, evaluator=evaluator, progress=progress)
    if not args.json:
        print_search(report, out)
    return report


def print_search(report: dict, out) -> None:
    best = report.get("best")
    if best is None:
        print(f"no trial completed; wrote {out}")
        return
    for name, entry in (("base VLM", report["base"]), ("grid best", report.get("grid_best")), ("search best", best)):
        if entry is None:
            continue
        cells = "  ".join(f"{k} {100 * f['accuracy']:.1f} % [{100 * f['low']:.0f}–{100 * f['high']:.0f}]"
                          for k, f in entry["objectives"].items())
        test = "vs base p=" + f"{entry['vs_base']['p_value']:.3g}" if "vs_base" in entry else ""
        print(f"{name:<12} test (strict): {cells}  macro {100 * entry['macro_mean']:.1f} %  "
              f"official {100 * entry['official']['accuracy']:.1f} %  {test}")
    print(f"best trial {best['trial']} of {sum(report['trials'].values())}; "
          f"wrote {', '.join(report['files'])} in {out}")
