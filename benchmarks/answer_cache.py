"""Answer latency with and without the configuration cache, side by side in one run.

Builds a tiny Qwen2.5-VL + Qwen2 pair locally, then times `Answerer.ask` for a merged plan on an
image question: `miss_s` (apply + generate + store, median over fresh cache directories) and `hit_s`
(served from the diskcache on disk, median of 20). Target: hit_s ≤ 0.02.

Run (after `pip install -e .`): python benchmarks/answer_cache.py    → one JSON object on stdout
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image
from transformers.utils import logging as hf_logging

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.run.generate import GenerationSettings
from merging.run.answerer import Answerer
from toy.tiny import DecoderShape, build_qwen_pair

PLAN = MergePlan.from_dict({"rules": [{"components": ["self_attn"],
                                       "curve": {"preset": "loglinear", "start": 0.05, "end": 0.4}}]})


def main() -> None:
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = build_qwen_pair(root / "pair", DecoderShape(hidden_size=128, num_hidden_layers=8, intermediate_size=256))
        engine = MergeEngine(load_pair(*dirs))
        image = Image.new("RGB", (56, 56), (40, 120, 200))
        question, settings = "How many shapes are there?", GenerationSettings(max_new_tokens=32)

        misses = []
        for i in range(3):
            answerer = Answerer(engine, AnswerCache(root / f"cache{i}"))
            engine.restore()
            start = time.perf_counter()
            result = answerer.ask(PLAN, question, image, settings)
            misses.append(time.perf_counter() - start)
            assert result["cached"] is False
        hits = []
        for _ in range(20):
            start = time.perf_counter()
            result = answerer.ask(PLAN, question, image, settings)
            hits.append(time.perf_counter() - start)
            assert result["cached"] is True
        miss_s, hit_s = statistics.median(misses), statistics.median(hits)
        print(json.dumps({"miss_s": miss_s, "hit_s": hit_s, "miss_over_hit": miss_s / hit_s,
                          "max_new_tokens": settings.max_new_tokens, "layers": engine.pair.layout.num_layers}))


if __name__ == "__main__":
    main()
