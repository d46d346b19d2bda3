"""Command line: mergescope (or python -m merging) {inspect,answer,cache,sweep,grams,export} ...

Add --json for one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys

from .device_cache import DEVICE_CACHE_HELP, budget_from_gb
from .errors import MergescopeError


def _pair_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pair", help="a known pair (see merging/known_pairs.py), instead of --vlm/--llm/--base; "
                                       "default: the shipped toy pair")
    parser.add_argument("--vlm", help="VLM folder or hub id (resident, merged in place)")
    parser.add_argument("--llm", help="donor text LLM folder or hub id (read lazily)")
    parser.add_argument("--base", help="optional common base model (for methods that need one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    parser.add_argument("--device-cache-gb", type=float, help=DEVICE_CACHE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _load(args):
    from .known_pairs import resolve_models
    from .pair import load_pair
    models = resolve_models(args.pair, args.vlm, args.llm, args.base)
    return load_pair(models.vlm, models.llm, models.base, dtype=args.dtype, device=args.device)


def _gram_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grams-vlm", help="the VLM's Gram file (`grams`), for regmean rules")
    parser.add_argument("--grams-donor", help="the donor's Gram file (`grams`), for regmean rules")


def _engine(args):
    """The pair loaded as named, with the Gram files attached (both or none)."""
    from .engine import MergeEngine
    from .grams import gram_paths
    grams = gram_paths(args.grams_vlm, args.grams_donor)  # bad flags fail before the model is loaded
    budget = budget_from_gb(args.device_cache_gb)  # a bad flag fails before the model is loaded
    return MergeEngine(_load(args), grams=grams, device_cache_bytes=budget)


def cmd_inspect(args) -> dict:
    """Load the pair, print its layout, and the donor's distance from the VLM per layer and component."""
    from .distance import role_distances
    pair = _load(args)
    layout = pair.layout
    report = {"num_layers": layout.num_layers, "matched": len(layout.slots), "unmatched": layout.unmatched,
              "mismatched": [{"name": n, "vlm": list(a), "donor": list(b)} for n, a, b in layout.mismatched],
              "notes": layout.notes, "fingerprints": pair.fingerprints(), "distances": role_distances(pair)}
    if not args.json:
        print(f"{layout.num_layers} decoder layers; {len(layout.slots)} tensors matched, "
              f"{len(layout.unmatched)} without a donor tensor")
        for note in layout.notes:
            print("note:", note)
        print(f"{'layer':>5}  {'role':<26} {'rel_l2':>8} {'cosine':>8}")
        for row in report["distances"]:
            layer = "-" if row["layer"] is None else row["layer"]
            print(f"{layer:>5}  {row['role']:<26} {row['rel_l2']:8.4f} {row['cosine']:8.4f}")
    return report


def cmd_answer(args) -> dict:
    """Answer one question with the base VLM and the merged plan (cached)."""
    from cache import AnswerCache

    from .generate import GenerationSettings, check_question, load_image
    from .plan import MergePlan
    from .answerer import Answerer
    plan = MergePlan.load(args.plan) if args.plan else MergePlan()
    image = load_image(args.image) if args.image else None
    check_question(args.question)  # a bad question fails before the model is loaded
    answerer = Answerer(_engine(args), AnswerCache(args.cache_dir) if args.cache_dir else None)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop))
    result = answerer.ask(plan, args.question, image, settings)
    result["seconds"] = round(result["seconds"], 4)
    if not args.json:
        print(result["answer"])
    return result


def cmd_cache(args) -> dict:
    """List, summarise or clear the answers cache."""
    from cache import AnswerCache
    store = AnswerCache(args.cache_dir)
    if args.action == "clear":
        result = {"cleared": store.clear()}
    elif args.action == "stats":
        result = store.stats()
    else:
        result = {"entries": [{"key": e["key"][:16], "plan": e["config"].get("plan"),
                               "question": e["config"].get("question"), "answer": e["result"].get("answer"),
                               "created_at": e["created_at"]} for e in store.entries()]}
    if not args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    return result


def cmd_sweep(args) -> dict:
    """Score a grid of plans on an eval set; write results.csv, results.json and heatmap.html."""
    from pathlib import Path

    from tqdm import tqdm

    from cache import AnswerCache

    from .evaluate import load_eval_set
    from .answerer import Answerer
    from .sweep import load_grid, run_sweep, write_results
    cells, settings = load_grid(args.grid)
    items = load_eval_set(args.eval_set)
    out = Path(args.out)
    answerer = Answerer(_engine(args), AnswerCache(args.cache_dir or out / "cache"))
    with tqdm(total=len(cells) * len(items), desc="sweep", unit="answer", file=sys.stderr) as bar:
        rows = run_sweep(answerer, cells, items, settings, progress=lambda done, total: bar.update(1))
    write_results(rows, out)
    summary = [{k: r[k] for k in ("setting", "method", "alpha", "accuracy", "computed", "cached")} for r in rows]
    if not args.json:
        for r in summary:
            alpha = "-" if r["alpha"] is None else f"{r['alpha']:g}"
            print(f"{r['setting']:<12} {r['method']:<10} α={alpha:<5} accuracy {100 * r['accuracy']:5.1f} %"
                  f"  ({r['computed']} computed, {r['cached']} cached)")
        print(f"wrote {out / 'results.csv'}, results.json, heatmap.html")
    return {"cells": summary, "out": str(out)}


def cmd_grams(args) -> dict:
    """Compute a model's Gram statistics on an eval set (for RegMean)."""
    from tqdm import tqdm

    from .grams import run_grams
    with tqdm(desc="grams", unit="sample", file=sys.stderr, disable=args.json) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(1)
        report = run_grams(args.model, args.data, args.out, scope=args.modules, max_samples=args.max_samples,
                           dtype=args.dtype, device=args.device, progress=progress)
    if not args.json:
        print(f"wrote {report['out']}: {report['stored']} Gram matrices ({report['shared']} layers share one), "
              f"{report['samples']} samples, {report['tokens']} tokens, {report['bytes'] / 2**20:.1f} MiB; "
              f"model fingerprint {report['fingerprint']}")
    return report


def cmd_export(args) -> dict:
    """Write the merged checkpoint, its plan, model card and mergekit YAML."""
    from tqdm import tqdm

    from .export import export_checkpoint, parse_size
    from .plan import MergePlan
    plan = MergePlan.load(args.plan)
    max_shard = parse_size(args.max_shard_size)  # bad input fails before the model is loaded
    engine = _engine(args)
    with tqdm(desc="export", unit="tensor", file=sys.stderr, disable=args.json) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(1)
        report = export_checkpoint(engine, plan, args.out, max_shard_bytes=max_shard, overwrite=args.overwrite,
                                   progress=progress)
    if not args.json:
        print(f"wrote {report['out']}: {report['tensors']} tensors ({report['merged']} merged) in "
              f"{report['shards']} shard(s), {report['bytes'] / 2**20:.1f} MiB")
        print("mergekit.yaml written" if report["mergekit"] else f"no mergekit.yaml: {report['mergekit_reason']}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for an error the user can fix)."""
    parser = argparse.ArgumentParser(prog="mergescope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="mapping report and per-layer VLM⇄donor distances")
    _pair_args(inspect)
    ans = sub.add_parser("answer", help="answer a question (about an image) with a merged model")
    _pair_args(ans)
    _gram_args(ans)
    ans.add_argument("--plan", help="plan file (YAML or JSON); default: the base VLM")
    ans.add_argument("--image", help="image file")
    ans.add_argument("--question", required=True)
    ans.add_argument("--max-new-tokens", type=int, default=32)
    ans.add_argument("--seed", type=int, help="sample with this seed (default: greedy)")
    ans.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ans.add_argument("--cache-dir", help="remember answers here (diskcache, JSON values); a hit skips the model")
    cache = sub.add_parser("cache", help="list, count or clear the answers cache")
    cache.add_argument("action", choices=["ls", "stats", "clear"])
    cache.add_argument("--cache-dir", required=True)
    cache.add_argument("--json", action="store_true")
    sweep = sub.add_parser("sweep", help="score a grid of plans on an eval set (resumable, cached)")
    _pair_args(sweep)
    _gram_args(sweep)
    sweep.add_argument("--grid", required=True, help="grid YAML (settings × methods × alphas)")
    sweep.add_argument("--eval-set", required=True, help="PATH.jsonl, mathvista:PATH or mathvision:PATH")
    sweep.add_argument("--out", required=True, help="folder for results.csv, results.json, heatmap.html")
    sweep.add_argument("--cache-dir", help="answers cache (default: OUT/cache)")
    grams = sub.add_parser("grams", help="RegMean statistics: per-linear-layer Gram matrices of one model")
    grams.add_argument("--model", required=True, help="the VLM (image + question samples) or the donor LLM (text)")
    grams.add_argument("--data", required=True, help="eval set: PATH.jsonl, mathvista:PATH or mathvision:PATH")
    grams.add_argument("--out", required=True, help="Gram file to write (.safetensors)")
    grams.add_argument("--modules", default="all", choices=["all", "attention"],
                       help="all linear layers (7B: 41.5 GiB) or only q/k/v/o (7B: 2.7 GiB)")
    grams.add_argument("--max-samples", type=int, help="use at most N items of the eval set")
    grams.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    grams.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    grams.add_argument("--json", action="store_true", help="print one JSON object")
    export = sub.add_parser("export", help="write the merged VLM as a checkpoint (+ plan, model card, mergekit YAML)")
    _pair_args(export)
    export.add_argument("--plan", required=True, help="plan file (YAML or JSON)")
    export.add_argument("--out", required=True, help="new folder for the checkpoint")
    _gram_args(export)
    export.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB, 2GiB")
    export.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # keep stdout/stderr for results and errors
    try:
        result = {"inspect": cmd_inspect, "answer": cmd_answer, "cache": cmd_cache, "sweep": cmd_sweep,
                  "grams": cmd_grams, "export": cmd_export}[args.command](args)
    except MergescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
