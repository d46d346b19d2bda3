"""`mergescope layers`: which layers move an answer — one question's sensitivity table (`--question`), or the
map over an eval set (`--eval-set ... --out DIR`, merging/experiments/layer_map.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from cache import AnswerCache
from merging.cli.args import natural, pair_args, positive, stack_of, text
from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.experiments.layer_map import eval_layer_sensitivity, write_layer_map
from merging.io.images import read_image
from merging.plan.merge_plan import MergePlan
from merging.run.generate import check_question
from merging.run.sensitivity import layer_sensitivity

# Without --plan: every tensor at α 1, so "only" puts the donor's block in place of the VLM's.
DEFAULT_PLAN = {"rules": [{"components": ["all"], "method": "linear", "curve": {"preset": "constant", "value": 1.0}}]}


def layers_parser(sub) -> None:
    """The `layers` command's options."""
    layers = sub.add_parser("layers", help="layer sensitivity: which layer blocks × groups move an answer")
    pair_args(layers)
    layers.add_argument("--plan", type=text, help="plan YAML (default: all tensors, linear, α 1)")
    layers.add_argument("--block", type=positive, default=1, help="layers per block (default 1)")
    layers.add_argument("--question", type=text, help="one question: print its sensitivity rows")
    layers.add_argument("--image", type=text, help="the question's image")
    layers.add_argument("--gold", type=text, help="the question's gold answer (adds p_gold)")
    layers.add_argument("--eval-set", type=text, help="PATH.jsonl, mathvista:PATH or mathvision:PATH: the map")
    layers.add_argument("--sample", type=positive, help="a seeded sample of N items, stratified by category")
    layers.add_argument("--sample-seed", type=natural, default=0, help="seed of --sample (default 0)")
    layers.add_argument("--out", type=text, help="folder for layers.json and layers.html (with --eval-set)")
    layers.add_argument("--cache-dir", type=text, help="answers cache (default: OUT/cache with --eval-set, else none)")


def cmd_layers(args) -> dict:
    """One question's rows (`run.sensitivity.layer_sensitivity`) or the eval set's map, with its seconds."""
    if (args.question is None) == (args.eval_set is None):
        raise MergescopeError("layers: give either --question (one question) or --eval-set with --out (the map)")
    if args.eval_set is not None and args.out is None:
        raise MergescopeError("layers --eval-set: give --out DIR for layers.json and layers.html")
    plan = MergePlan.load(args.plan) if args.plan else MergePlan.from_dict(DEFAULT_PLAN)
    if args.question is not None:  # bad input fails before the model is loaded
        check_question(args.question)
        image = read_image(args.image) if args.image else None
    else:
        items = load_eval_set(args.eval_set)
        items = sample_items(items, args.sample, args.sample_seed) if args.sample else items
    cache_dir = args.cache_dir or (Path(args.out) / "cache" if args.out else None)
    answerer = stack_of(args, AnswerCache(cache_dir) if cache_dir else None).answerer
    start = time.perf_counter()
    if args.question is not None:
        rows = list(layer_sensitivity(answerer, plan, args.question, image, args.block, args.gold))
        report = {"rows": rows, "seconds": round(time.perf_counter() - start, 3)}
        if not args.json:
            for r in rows:
                gold = "" if r["p_gold"] is None else f" p_gold {r['p_gold']:.4f}"
                p_top = "   -  " if r["p_top"] is None else f"{r['p_top']:.4f}"
                print(f"L{r['layers'][0]}–{r['layers'][1]} {r['group']:<9} {r['mode']:<7} p_top {p_top}{gold} "
                      f"KL {r['kl_to_base']:.4f}  {r['answer']!r}")
            print(f"{len(rows)} cells in {report['seconds']:.1f} s")
        return report
    with tqdm(desc="layers", unit="pass", file=sys.stderr, disable=args.json) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)
        result = eval_layer_sensitivity(answerer, plan, items, args.block, progress=progress)
    result["seconds"] = round(time.perf_counter() - start, 3)
    write_layer_map(result, Path(args.out))
    if not args.json:
        print(f"{result['items']} items ({len(result['skipped'])} skipped), {len(result['blocks'])} blocks × "
              f"{len(result['groups'])} groups in {result['seconds']:.1f} s; wrote {Path(args.out) / 'layers.json'}, "
              f"layers.html")
    return result
