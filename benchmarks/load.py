"""Load test: N concurrent gradio_client clients, each asking under its own plans, against a real server.

Builds a tiny pair locally, serves the explorer in-process (one model slot, a bounded queue), and has
`--clients` clients each send `--requests` questions under distinct plans (no two requests share a plan,
so every answer is computed). Afterwards every answer is recomputed alone, one plan at a time, with no
cache: `contamination` counts answers that differ (a plan leaking into another's weights), `lost`
counts requests that never came back. Prints one JSON object.

Run (after `pip install -e .`): python benchmarks/load.py [--clients 8 --requests 4]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transformers.utils import logging as hf_logging

from cache import AnswerCache
from merging import MergeEngine, MergePlan, load_pair
from merging.run.generate import GenerationSettings
from merging.run.answerer import Answerer
from toy.tiny import build_qwen_pair
from ui.app import Explorer, build_app

QUESTION, TOKENS = "Which colour comes next?", 12


def plan_for(client: int, request: int) -> MergePlan:
    alpha = round((client * 31 + request * 7) % 97 / 97, 4)
    components = ["all"] if (client + request) % 2 else ["self_attn"]
    return MergePlan.from_dict({"rules": [{"components": components,
                                           "curve": {"preset": "linear", "start": 0.0, "end": alpha}}]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    from gradio_client import Client
    with tempfile.TemporaryDirectory() as tmp:
        engine = MergeEngine(load_pair(*build_qwen_pair(Path(tmp) / "pair")))
        app = build_app(Explorer(Answerer(engine, AnswerCache(Path(tmp) / "cache")))).queue(
            default_concurrency_limit=1, max_size=4 * args.clients)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        url = f"http://127.0.0.1:{port}"

        def client_run(client: int) -> list[tuple[MergePlan, dict | None, float]]:
            api, out = Client(url, verbose=False), []
            for request in range(args.requests):
                plan, start = plan_for(client, request), time.perf_counter()
                try:
                    result = api.predict(plan.to_yaml(), QUESTION, TOKENS, api_name="/answer")
                except Exception:  # counted as lost
                    result = None
                out.append((plan, result, time.perf_counter() - start))
            return out

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            runs = [r for client_runs in pool.map(client_run, range(args.clients)) for r in client_runs]
        wall = time.perf_counter() - start
        app.close()
        alone = Answerer(engine, cache=None)
        settings = GenerationSettings(max_new_tokens=TOKENS)
        contamination = sum(1 for plan, result, _ in runs
                            if result is not None
                            and result["answer"] != alone.ask(plan, QUESTION, None, settings)["answer"])
        latencies = sorted(t for _, result, t in runs if result is not None)
        print(json.dumps({
            "clients": args.clients, "requests": len(runs), "answered": len(latencies),
            "lost": sum(1 for _, result, _ in runs if result is None), "contamination": contamination,
            "distinct_answers": len({result["answer"] for _, result, _ in runs if result}),
            "p50_s": statistics.median(latencies), "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
            "max_s": latencies[-1], "wall_s": wall, "throughput_per_s": len(latencies) / wall}))


if __name__ == "__main__":
    main()
