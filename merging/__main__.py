"""Command line: mergescope (or python -m merging) {inspect,answer,cache,sweep,search,grams,export,layers,plan} ...

Add --json for one JSON object on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm
from transformers.utils import logging as hf_logging

from cache import AnswerCache
from merging.cli.args import natural, pair_args, positive, stack_of, text
from merging.cli.layers import cmd_layers, layers_parser
from merging.cli.search import cmd_search, search_parser
from merging.errors import MergescopeError
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.experiments.distributed import run_sweep_ray
from merging.experiments.sweep import load_grid, record_sweep, run_sweep, write_results
from merging.export.hub import check_repo_id, push_folder
from merging.export.mergekit_import import plan_from_mergekit
from merging.export.writer import export_checkpoint, parse_size
from merging.io.images import read_image
from merging.plan.merge_plan import MergePlan
from merging.run.collect_grams import run_grams
from merging.run.generate import GenerationSettings, check_question
from merging.run.stack import model_spec
from merging.stats.distance import role_distances


def _checkpoint_report(pair) -> dict:
    """Per model (vlm, donor, base): quantization (None or a description) and stored dtype counts."""
    models = {"vlm": pair.vlm_files, "donor": pair.donor, "base": pair.base}
    return {role: None if ckpt is None else
            {"quantization": ckpt.quantization.describe() if ckpt.quantization else None,
             "dtypes": ckpt.dtype_counts()} for role, ckpt in models.items()}


def cmd_inspect(args) -> dict:
    """Load the pair, print its layout (coverage, quantization, dtypes), and the donor's distance from
    the VLM per layer and component."""
    pair = stack_of(args).pair
    layout = pair.layout
    checkpoints = _checkpoint_report(pair)
    donor_dtypes: dict[tuple, set] = {}
    for slot in layout.slots:
        donor_dtypes.setdefault((slot.layer, slot.role), set()).add(pair.donor.dtype_code(slot.donor_key))
    distances = role_distances(pair)
    for row in distances:
        row["donor_dtype"] = "/".join(sorted(donor_dtypes[(row["layer"], row["role"])]))
    report = {"num_layers": layout.num_layers, "matched": len(layout.slots), "lm_tensors": layout.total,
              "coverage": layout.coverage(), "unmatched": layout.unmatched,
              "vlm_only_layers": layout.interleaved, "vlm_only": layout.vlm_only,
              "mismatched": [{"name": n, "vlm": list(a), "donor": list(b)} for n, a, b in layout.mismatched],
              "notes": layout.notes, "checkpoints": checkpoints, "fingerprints": pair.fingerprints(),
              "distances": distances}
    if not args.json:
        print(f"{layout.num_layers} decoder layers; {len(layout.slots)} tensors matched (of {layout.total} "
              f"language-model tensors), {len(layout.unmatched)} without a donor tensor")
        if layout.vlm_only:
            print(f"VLM-only (never merged): layers {', '.join(map(str, layout.interleaved))}, "
                  f"{len(layout.vlm_only)} tensors")
        for role, info in checkpoints.items():
            if info is not None:
                dtypes = ", ".join(f"{code}×{n}" for code, n in info["dtypes"].items())
                print(f"{role}: {info['quantization'] or 'not quantized'}; dtypes {dtypes}")
        for note in layout.notes:
            print("note:", note)
        print(f"{'layer':>5}  {'role':<26} {'donor':>8} {'rel_l2':>8} {'cosine':>8}")
        for row in distances:
            layer = "-" if row["layer"] is None else row["layer"]
            print(f"{layer:>5}  {row['role']:<26} {row['donor_dtype']:>8} {row['rel_l2']:8.4f} {row['cosine']:8.4f}")
    return report


def cmd_answer(args) -> dict:
    """Answer one question with the base VLM and the merged plan (cached)."""

    plan = MergePlan.load(args.plan) if args.plan else MergePlan()
    image = read_image(args.image) if args.image else None
    check_question(args.question)  # a bad question fails before the model is loaded
    answerer = stack_of(args, AnswerCache(args.cache_dir) if args.cache_dir else None).answerer
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop))
    result = answerer.ask(plan, args.question, image, settings)
    result["seconds"] = round(result["seconds"], 4)
    if not args.json:
        print(result["answer"])
    return result


def cmd_cache(args) -> dict:
    """List, summarise or clear the answers cache."""
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



    cells, settings = load_grid(args.grid)
    items = load_eval_set(args.eval_set)
    if args.sample:
        items = sample_items(items, args.sample, args.sample_seed)
    out = Path(args.out)
    cache = AnswerCache(args.cache_dir or out / "cache")
    with tqdm(total=len(cells) * len(items), desc="sweep", unit="answer", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)
        if args.workers or args.ray:
            rows = _sweep_on_ray(args, cells, items, settings, cache, progress)
        else:
            rows = run_sweep(stack_of(args, cache).answerer, cells, items, settings, progress=progress,
                             batch_size=args.batch_size)
    write_results(rows, out)
    record_sweep(cache, rows, Path(args.grid).name, args.eval_set)
    summary = [{k: r[k] for k in ("setting", "method", "alpha", "accuracy", "accuracy_low", "accuracy_high",
                                  "official_accuracy", "official_accuracy_low", "official_accuracy_high",
                                  "computed", "cached", "by_group", "right_to_wrong", "wrong_to_right", "mcnemar_p")}
               for r in rows]
    if not args.json:
        for r in summary:
            alpha = "-" if r["alpha"] is None else f"{r['alpha']:g}"
            print(f"{r['setting']:<12} {r['method']:<12} α={alpha:<5} strict {100 * r['accuracy']:5.1f} % "
                  f"[{100 * r['accuracy_low']:.0f}–{100 * r['accuracy_high']:.0f}]  official "
                  f"{100 * r['official_accuracy']:5.1f} % [{100 * r['official_accuracy_low']:.0f}–"
                  f"{100 * r['official_accuracy_high']:.0f}]  ({r['computed']} computed, {r['cached']} cached)"
                  + _flips_text(r))
        print(f"wrote {out / 'results.csv'}, results.json, heatmap.html")
    return {"cells": summary, "items": len(items), "out": str(out)}


def _flips_text(row: dict) -> str:
    """The cell's flips against the base VLM, for the sweep report (empty for the baseline)."""
    if row["mcnemar_p"] is None:
        return ""
    lost, won = row["right_to_wrong"], row["wrong_to_right"]
    listed = "".join(f"\n    {sign} {', '.join(ids[:12])}{' …' if len(ids) > 12 else ''}"
                     for sign, ids in (("right→wrong:", lost), ("wrong→right:", won)) if ids)
    return f"  flips −{len(lost)}/+{len(won)}, McNemar p={row['mcnemar_p']:.3g}{listed}"


def _sweep_on_ray(args, cells, items, settings, cache, progress) -> list[dict]:
    spec = model_spec(args)
    report = run_sweep_ray(spec, cells, items, settings, cache, workers=args.workers, address=args.ray,
                           batch_size=args.batch_size, progress=progress, donor_label=spec.donor_label)
    return report["rows"]


def cmd_grams(args) -> dict:
    """Compute a model's Gram statistics on an eval set (for RegMean)."""

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
    """Write the merged checkpoint, its plan, model card and mergekit YAML; with --push-to-hub, upload the
    folder to that Hub model repo (`merging.export.hub.push_folder`)."""
    plan = MergePlan.load(args.plan)
    max_shard = parse_size(args.max_shard_size)  # bad input fails before the model is loaded
    if args.push_to_hub is not None:
        check_repo_id(args.push_to_hub)
    engine = stack_of(args).engine
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
    if args.push_to_hub is not None:
        report["hub"] = push_folder(report["out"], args.push_to_hub, report["plan_hash"], private=args.private)
        if not args.json:
            print(f"uploaded to {report['hub']['url']}")
    return report


def cmd_plan(args) -> dict:
    """Write the plan a mergekit configuration describes (`plan_from_mergekit`); nothing is written on a refusal."""
    source, out = Path(args.from_mergekit), Path(args.out)
    try:
        text = source.read_text()
    except OSError as exc:
        raise MergescopeError(f"cannot read mergekit configuration {source}: {exc.strerror}") from None
    imported = plan_from_mergekit(text)
    if out.exists() and not args.overwrite:
        raise MergescopeError(f"{out} exists; pass --overwrite to replace it")
    out.write_text(imported.plan.to_yaml())
    report = {"out": str(out), "rules": len(imported.plan.rules), "plan_hash": imported.plan.hash(),
              "vlm": imported.vlm, "donor": imported.donor, "base": imported.base}
    if not args.json:
        print(f"wrote {out}: {report['rules']} rule(s), plan {report['plan_hash']}; mergekit's models: "
              f"VLM {imported.vlm}, donor {imported.donor}" + (f", base {imported.base}" if imported.base else ""))
    return report


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (2 for an error the user can fix)."""
    parser = argparse.ArgumentParser(prog="mergescope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="mapping report and per-layer VLM⇄donor distances")
    pair_args(inspect)
    ans = sub.add_parser("answer", help="answer a question (about an image) with a merged model")
    pair_args(ans)
    ans.add_argument("--plan", type=text, help="plan file (YAML or JSON); default: the base VLM")
    ans.add_argument("--image", type=text, help="image file")
    ans.add_argument("--question", type=text, required=True)
    ans.add_argument("--max-new-tokens", type=positive, default=32)
    ans.add_argument("--seed", type=natural, help="sample with this seed (default: greedy)")
    ans.add_argument("--stop", type=text, action="append", default=[], help="stop string (repeatable)")
    ans.add_argument("--cache-dir", type=text,
                     help="remember answers here (diskcache, JSON values); a hit skips the model")
    cache = sub.add_parser("cache", help="list, count or clear the answers cache")
    cache.add_argument("action", choices=["ls", "stats", "clear"])
    cache.add_argument("--cache-dir", type=text, required=True)
    cache.add_argument("--json", action="store_true")
    sweep = sub.add_parser("sweep", help="score a grid of plans on an eval set (resumable, cached)")
    pair_args(sweep)
    sweep.add_argument("--grid", type=text, required=True, help="grid YAML (settings × methods × alphas)")
    sweep.add_argument("--eval-set", type=text, required=True, help="PATH.jsonl, mathvista:PATH or mathvision:PATH")
    sweep.add_argument("--out", type=text, required=True, help="folder for results.csv, results.json, heatmap.html")
    sweep.add_argument("--cache-dir", type=text, help="answers cache (default: OUT/cache)")
    sweep.add_argument("--sample", type=positive, help="score a seeded sample of N items, stratified by category")
    sweep.add_argument("--sample-seed", type=natural, default=0, help="seed of --sample (default 0)")
    sweep.add_argument("--batch-size", type=positive, help="answers per generate call (default: by model size on CPU, "
                                                     "memory-aware on CUDA)")
    sweep.add_argument("--workers", type=positive, help="run on N Ray workers of a local cluster (pip install ray)")
    sweep.add_argument("--ray", metavar="ADDRESS", help="join a running Ray cluster (ray start --head ...)")
    search_parser(sub)
    layers_parser(sub)
    grams = sub.add_parser("grams", help="RegMean statistics: per-linear-layer Gram matrices of one model")
    grams.add_argument("--model", required=True, help="the VLM (image + question samples) or the donor LLM (text)")
    grams.add_argument("--data", required=True, help="eval set: PATH.jsonl, mathvista:PATH or mathvision:PATH")
    grams.add_argument("--out", type=text, required=True, help="Gram file to write (.safetensors)")
    grams.add_argument("--modules", default="all", choices=["all", "attention"],
                       help="all linear layers (7B: 41.5 GiB) or only q/k/v/o (7B: 2.7 GiB)")
    grams.add_argument("--max-samples", type=positive, help="use at most N items of the eval set")
    grams.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    grams.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    grams.add_argument("--json", action="store_true", help="print one JSON object")
    export = sub.add_parser("export", help="write the merged VLM as a checkpoint (+ plan, model card, mergekit YAML)")
    pair_args(export)
    export.add_argument("--plan", type=text, required=True, help="plan file (YAML or JSON)")
    export.add_argument("--out", type=text, required=True, help="new folder for the checkpoint")
    export.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB, 2GiB")
    export.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    export.add_argument("--push-to-hub", metavar="OWNER/NAME", type=text,
                        help="then upload the folder to this Hub model repo (created if missing; needs "
                             "`huggingface-cli login` or HF_TOKEN)")
    export.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    plan = sub.add_parser("plan", help="a plan file from a mergekit YAML configuration")
    plan.add_argument("--from-mergekit", type=text, required=True, help="mergekit configuration (YAML)")
    plan.add_argument("--out", type=text, required=True, help="plan file to write (YAML)")
    plan.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()  # keep stdout/stderr for results and errors
    try:
        result = {"inspect": cmd_inspect, "answer": cmd_answer, "cache": cmd_cache, "sweep": cmd_sweep,
                  "search": cmd_search, "grams": cmd_grams, "export": cmd_export,
                  "layers": cmd_layers, "plan": cmd_plan}[args.command](args)
    except MergescopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a read-only folder while writing: the user can fix it, say where
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; free space there or choose another folder", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
