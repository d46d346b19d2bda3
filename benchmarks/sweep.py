"""Sweep throughput on the toy pair: one answer at a time vs batched vs Ray workers, in one run.

Prints one JSON object:
- answers                      answers per mode (cells × items, all computed: each mode has its own
                               empty cache)
- one_at_a_time_per_s          answers/s with `Answerer.ask` per item (the pre-batching sweep)
- batched_per_s                answers/s with `run_sweep` (batched `generate`, default batch size)
- batched_over_one             the ratio (target on the CPU: ≥ 4)
- ray_workers, ray_per_s       the same sweep on a local Ray cluster of CPU workers (`--workers`, 0 skips);
                               the cluster is started before timing, the workers (and their pair loads)
                               are part of the timed run, as in a real sweep
- batched_equals_one_at_a_time, ray_equals_single   answers identical, per cell and item
- device, torch_threads

Run (after `pip install -e '.[ray]'`): python benchmarks/sweep.py [--items 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from cache import AnswerCache
from merging import MergeEngine, load_pair
from merging.run.answerer import Answerer
from merging.evals.eval_sets import load_eval_set, sample_items
from merging.model.known_pairs import TOY_EVAL, TOY_LLM, TOY_VLM
from merging.experiments.sweep import parse_grid, run_sweep

GRID = ("components: {Setting 2: [self_attn]}\ncurves: {constant α: {preset: constant}}\n"
        "alphas: [0.4, 0.8]\nmax_new_tokens: 6\n")


def one_at_a_time(answerer: Answerer, cells, items, settings) -> list[list[str]]:
    return [[answerer.ask(cell.plan, it.question, it.image(), settings)["answer"] for it in items] for cell in cells]


def answers_of(rows: list[dict]) -> list[list[str]]:
    return [[a["answer"] for a in row["answers"]] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="eval items (stratified sample of the toy eval set)")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPU workers (0: skip Ray)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    cells, settings = parse_grid(GRID)
    items = sample_items(load_eval_set(TOY_EVAL), args.items, seed=0)
    engine = MergeEngine(load_pair(TOY_VLM, TOY_LLM, dtype="float32"))
    report: dict = {"answers": len(cells) * len(items), "device": "cpu", "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        single = one_at_a_time(Answerer(engine, AnswerCache(Path(tmp, "one"))), cells, items, settings)
        report["one_at_a_time_per_s"] = report["answers"] / (time.perf_counter() - start)
        start = time.perf_counter()
        batched = answers_of(run_sweep(Answerer(engine, AnswerCache(Path(tmp, "batched"))), cells, items, settings))
        report["batched_per_s"] = report["answers"] / (time.perf_counter() - start)
        report["batched_over_one"] = report["batched_per_s"] / report["one_at_a_time_per_s"]
        report["batched_equals_one_at_a_time"] = batched == single
        report["ray_workers"] = args.workers
        if args.workers:
            report.update(ray_figures(args.workers, cells, items, settings, Path(tmp, "ray"), single))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}))


def ray_figures(workers: int, cells, items, settings, cache_dir: Path, single: list[list[str]]) -> dict:
    import ray

    from merging.experiments.distributed import run_sweep_ray
    from merging.run.stack import ModelSpec
    spec = ModelSpec(str(TOY_VLM), str(TOY_LLM), dtype="float32")
    # warm-up on one item: starts the local cluster (not timed)
    run_sweep_ray(spec, cells[:1], items[:1], settings, AnswerCache(cache_dir / "warm"), workers=workers)
    start = time.perf_counter()
    report = run_sweep_ray(spec, cells, items, settings, AnswerCache(cache_dir), workers=workers)
    seconds = time.perf_counter() - start
    ray.shutdown()
    return {"ray_per_s": len(cells) * len(items) / seconds, "ray_equals_single": answers_of(report["rows"]) == single}


if __name__ == "__main__":
    sys.exit(main())
