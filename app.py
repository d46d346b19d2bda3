"""Mergescope: python app.py [--vlm V --llm L ...] — the explorer in a browser, on 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from cache import AnswerCache
from merging import MergeEngine, MergescopeError, load_pair
from merging.checkpoint import Checkpoint
from merging.device_cache import DEVICE_CACHE_HELP, budget_from_gb
from merging.grams import gram_paths
from merging.evaluate import load_eval_set
from merging.known_pairs import KNOWN_PAIRS, resolve_models
from merging.pair import resolve_model_dir
from merging.answerer import Answerer

PUBLIC_MAX_UPLOAD = "5mb"
PUBLIC_QUEUE = 32  # requests waiting beyond this are turned away at once instead of piling up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pair", help=f"a known pair: {', '.join(KNOWN_PAIRS)} (default: toy, shipped in assets/)")
    parser.add_argument("--vlm", help="VLM folder or hub id (instead of --pair)")
    parser.add_argument("--llm", help="donor text LLM folder or hub id")
    parser.add_argument("--base", help="common base model (task arithmetic, TIES, DARE)")
    parser.add_argument("--grams-vlm", help="the VLM's Gram file (python -m merging grams), for RegMean")
    parser.add_argument("--grams-donor", help="the donor's Gram file, for RegMean")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device-cache-gb", type=float, help=DEVICE_CACHE_HELP)
    parser.add_argument("--eval-set", help="examples and sweep items: PATH.jsonl, mathvista:PATH, mathvision:PATH")
    parser.add_argument("--cache-dir", default="runs/cache", help="answers cache (JSON values)")
    parser.add_argument("--export-dir", default="runs/exports", help="where exports may be written ('' = off)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--public", action="store_true",
                        help="public demo: fixed pair and eval set, capped answers and sweeps, export off, "
                             "5 MB uploads, a per-session rate limit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from ui.app import Explorer, build_app
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        models = resolve_models(args.pair, args.vlm, args.llm, args.base)
        grams = gram_paths(args.grams_vlm, args.grams_donor)
        cache_bytes = budget_from_gb(args.device_cache_gb)
        eval_spec = args.eval_set or models.eval_set
        pair = load_pair(models.vlm, models.llm, models.base, dtype=args.dtype, device=args.device)
        items = load_eval_set(eval_spec) if eval_spec else []
        donors = {label: Checkpoint(resolve_model_dir(path)) for label, path in models.other_donors}
        engine = MergeEngine(pair, grams=grams, device_cache_bytes=cache_bytes)
        answerer = Answerer(engine, AnswerCache(args.cache_dir), donors, models.donor_label)
    except MergescopeError as exc:
        sys.exit(f"error: {exc}")
    explorer = Explorer(answerer, items, eval_spec or "",
                        Path(args.export_dir) if args.export_dir else None, public=args.public)
    build_app(explorer).queue(default_concurrency_limit=1, max_size=PUBLIC_QUEUE if args.public else None).launch(
        server_name=args.host, server_port=args.port, share=args.share, show_error=False,
        max_file_size=PUBLIC_MAX_UPLOAD if args.public else None)


if __name__ == "__main__":
    main()
