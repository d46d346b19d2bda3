"""Layer-sensitivity cost (CPU): wall-clock seconds of one question's `layer_sensitivity`.

That is the function behind the `/layers` API and `mergescope layers --question`, called the way
merging/cli/layers.py calls it (the stack from the model options, DEFAULT_PLAN: all tensors, linear, α 1)
on the toy eval set's first question and image, for:

  toy   the shipped toy pair (assets/toy, the default pair), blocks 1 and 4
  1.5B  a Qwen2.5-VL-shaped pair with Qwen2.5-1.5B's text configuration (benchmarks/scaling.py's SIZES and
        full vocabulary, random bf16 weights written by toy/sharded.py as scaling.py does), block 4

Per block: cells (blocks × 3 groups × 2 modes), cold_s (an empty answers cache: a forward pass per cell
plus the base VLM's) and warm_s (the same call again: every cell from the cache). Per size: params (the
VLM's), load_s, torch threads, `os.getloadavg()` at start and end. Model files and caches go in a
temporary folder, deleted at the end (1.5B: about 6.5 GB). Logs to stderr, ONE JSON object to stdout.

Run: python benchmarks/layers_cost.py [--sizes toy,1.5B] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's cache, merging and toy packages
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from scaling import SIZES, VOCAB  # noqa: E402  (run as a script: benchmarks/ is on sys.path)

from cache import AnswerCache  # noqa: E402
from merging.cli.args import pair_args, stack_of  # noqa: E402
from merging.cli.layers import DEFAULT_PLAN  # noqa: E402
from merging.evals.eval_sets import load_eval_set  # noqa: E402
from merging.model.known_pairs import TOY_EVAL  # noqa: E402
from merging.plan.merge_plan import MergePlan  # noqa: E402
from merging.run.sensitivity import layer_sensitivity  # noqa: E402
from toy.sharded import write_qwen_pair_sharded  # noqa: E402

BLOCKS = {"toy": [1, 4], "1.5B": [4]}


def log(msg: str) -> None:
    print(f"[layers_cost] {msg}", file=sys.stderr, flush=True)


def measure(name: str, root: Path) -> dict:
    """One size: build (1.5B) and load the pair as the CLI does, then cold and warm sensitivity per block."""
    row: dict = {"size": name, "loadavg_start": os.getloadavg()}
    cli = argparse.ArgumentParser()
    pair_args(cli)
    argv: list[str] = []
    if name != "toy":
        start = time.perf_counter()
        vlm, llm = write_qwen_pair_sharded(root / "pair", SIZES[name], vocab_size=VOCAB)
        row.update(build_s=time.perf_counter() - start, vocab_size=VOCAB, vocab_reduced=False,
                   text_config=SIZES[name].as_dict())
        argv = ["--vlm", str(vlm), "--llm", str(llm)]
    start = time.perf_counter()
    stack = stack_of(cli.parse_args(argv))
    row["load_s"] = time.perf_counter() - start
    row["params"] = sum(p.numel() for p in stack.pair.vlm.parameters())
    row["num_layers"] = stack.pair.layout.num_layers
    row["dtype"] = str(next(stack.pair.vlm.parameters()).dtype)
    item = load_eval_set(TOY_EVAL)[0]
    question, image = item.question, item.image()
    plan = MergePlan.from_dict(DEFAULT_PLAN)
    row["blocks"] = []
    for block in BLOCKS[name]:
        stack.answerer.cache = AnswerCache(root / f"cache-{name}-{block}")  # empty: a fresh folder
        figures: dict = {"block": block}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            rows = list(layer_sensitivity(stack.answerer, plan, question, image, block))
            figures[f"{run}_s"] = time.perf_counter() - start
            figures[f"{run}_cached_cells"] = sum(r["cached"] for r in rows)
            figures["cells"] = len(rows)
            log(f"{name} block {block} {run}: {len(rows)} cells in {figures[f'{run}_s']:.2f}s")
        figures["cold_s_per_cell"] = figures["cold_s"] / figures["cells"]
        row["blocks"].append(figures)
    row.update(torch_threads=torch.get_num_threads(), loadavg_end=os.getloadavg())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="toy,1.5B", help=f"comma-separated, of {list(BLOCKS)}")
    parser.add_argument("--tmp", default=os.environ.get("TMPDIR", tempfile.gettempdir()),
                        help="where the temporary pair and caches go (1.5B: ~6.5 GB)")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := [s for s in sizes if s not in BLOCKS]:
        parser.error(f"unknown size(s) {unknown}; choose from {list(BLOCKS)}")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    free = shutil.disk_usage(args.tmp).free
    if "1.5B" in sizes and free < 10e9:
        parser.error(f"{args.tmp}: {free / 1e9:.1f} GB free; the 1.5B pair needs ~6.5 GB (give --tmp DIR)")
    root = Path(tempfile.mkdtemp(prefix="layers-cost-", dir=args.tmp))
    start, rows = time.perf_counter(), []
    try:
        for name in sizes:
            rows.append(measure(name, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"question": load_eval_set(TOY_EVAL)[0].id, "plan": DEFAULT_PLAN, "rows": rows,
                      "tmp_free_bytes_at_start": free, "cpu_count": os.cpu_count(),
                      "total_s": time.perf_counter() - start}, indent=1))


if __name__ == "__main__":
    main()
