"""A first look without downloads: build a small local pair, then compare answers across merges.

    python -m merging.toy.demo [--dir runs/demo]

Builds (once) a randomly initialised Qwen2.5-VL + Qwen2 pair whose donor is the VLM's decoder plus
noise, then applies a few plans in place and prints each plan's answer beside the base VLM's, with
the time each switch took. The models are untrained, so answers are gibberish: what the demo shows
is the mechanics — in-place switching in milliseconds, answers changing, bit-exact restore.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from ..engine import MergeEngine
from ..generate import answer
from ..pair import load_pair
from ..plan import MergePlan
from .tiny import DecoderShape, build_qwen_pair

PLANS = {
    "Setting 2, loglinear 0.05→0.4 (self-attention only)":
        {"components": ["self_attn"], "curve": {"preset": "loglinear", "start": 0.05, "end": 0.4}},
    "Setting 1, constant 0.4 (all tensors)": {"components": ["all"], "curve": {"preset": "constant", "value": 0.4}},
    "layer swap from layer 4, α 1.0": {"components": ["all"], "curve": {"preset": "step", "layer": 4, "value": 1.0}},
}


COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}


def ensure_demo_pair(root: Path) -> tuple[Path, Path, str]:
    """Build (once) the demo pair and a few example items under `root`; returns (vlm, llm, eval JSONL)."""
    if not (root / "vlm" / "config.json").exists() or not (root / "llm" / "config.json").exists():
        print(f"building a demo pair in {root} ...")
        build_qwen_pair(root, DecoderShape(hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
                                           intermediate_size=256))
    examples = root / "examples.jsonl"
    if not examples.exists():
        lines = []
        for name, rgb in COLOURS.items():
            image = Image.new("RGB", (56, 56), (255, 255, 255))
            image.paste(rgb, (14, 14, 42, 42))
            image.save(root / f"{name}.png")
            lines.append(json.dumps({"id": name, "image": f"{name}.png", "question": "What colour is the square?",
                                     "answer": name, "answer_type": "text"}))
        examples.write_text("\n".join(lines) + "\n")
    return root / "vlm", root / "llm", str(examples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="runs/demo", help="where the demo pair is built (once)")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    vlm, llm, _ = ensure_demo_pair(Path(args.dir))
    pair = load_pair(vlm, llm)
    engine = MergeEngine(pair)
    image = Image.new("RGB", (56, 56), (30, 90, 200))
    question = "How many shapes are there?"
    params = dict(pair.vlm.named_parameters())
    original = {s.name: params[s.name].detach().clone() for s in pair.layout.slots}
    print(f"{pair.layout.num_layers} layers, {len(pair.layout.slots)} mergeable tensors\n")
    print(f"{'base VLM':<55} {answer(pair, question, image)!r}")
    for name, rule in PLANS.items():
        report = engine.apply(MergePlan.from_dict({"rules": [rule]}))
        print(f"{name:<55} {answer(pair, question, image)!r}\n"
              f"{'':<55} ({len(report.written)} tensors written, {len(report.restored)} restored "
              f"in {report.seconds * 1000:.1f} ms)")
    engine.restore()
    exact = all(torch.equal(params[n], t) for n, t in original.items())
    print(f"\nrestored to the base VLM: bit-exact = {exact}")


if __name__ == "__main__":
    main()
