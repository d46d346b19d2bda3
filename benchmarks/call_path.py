"""How far a Compare click travels before the first tensor write: project calls, functions, files, threads.

    python benchmarks/call_path.py

Drives the Compare tab's answer handler (`ui.compare_tab.on_compare`) on the toy pair with a plan
not yet in the weights, and records with `sys.setprofile` / `threading.setprofile` every call into the
project's own Python (merging/, cache/, ui/) on every thread, from the click until the first write
into a resident tensor starts (a merge method's function, a fused write batch or a CPU-pool job).
Prints one JSON object: {"calls", "functions", "files", "threads", "hand_offs", "path_files"}.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
from pathlib import Path

from transformers.utils import logging as hf_logging

from merging.engine.merge_engine import MergeEngine
from merging.model.known_pairs import known_pair
from merging.model.pair import load_pair
from merging.run.answerer import Answerer
from ui import compare_tab
from ui.explorer import Explorer
from ui.plan_panel import PARAM_DEFS

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tuple(str(ROOT / folder) + "/" for folder in ("merging", "cache", "ui"))
WRITES = (str(ROOT / "merging/methods") + "/", str(ROOT / "merging/engine/fused.py"),
          str(ROOT / "merging/engine/cpu_pool.py"))
WRITE_FUNCTIONS = {"run", "lerp", "copy", "submit", "method"}  # entering one of these in WRITES is the write


class Recorder:
    """Profile hook: project calls per thread until the first write starts."""

    def __init__(self):
        self.calls: list[tuple[str, str, str]] = []  # (thread, file, function)
        self.written = threading.Event()
        self.active = False  # installed before the model worker's thread starts; records once active

    def __call__(self, frame, event, arg):
        if event != "call" or not self.active or self.written.is_set():
            return
        path = frame.f_code.co_filename
        if not path.startswith(PROJECT):
            return
        if path.startswith(WRITES) and frame.f_code.co_name in WRITE_FUNCTIONS:
            self.written.set()
            return
        self.calls.append((threading.current_thread().name, path, frame.f_code.co_name))


def click(explorer: Explorer, plan_alphas: list[float]) -> None:
    """One Compare click as Gradio would make it: the handler's generator, run to its end."""
    params = inspect.signature(compare_tab.on_compare).parameters
    defaults = {"img": None, "q": "What colour is the shape?", "text_only_q": True, "tokens": 4, "pinned": None,
                "donor_name": explorer.answerer.default_donor, "comps": ["self_attn"], "alphas": plan_alphas,
                "method_name": "linear", "request": None}
    args = [explorer] + [defaults[name] for name in list(params)[1:] if name in defaults]
    args += [None] + [None] * len(PARAM_DEFS)  # no separate group curves; every method parameter at its default
    for _ in compare_tab.on_compare(*args):
        pass


def main() -> None:
    hf_logging.disable_progress_bar()
    toy = known_pair("toy")
    engine = MergeEngine(load_pair(toy.vlm, toy.llm))
    explorer = Explorer(Answerer(engine), [], "", None)  # the worker's thread starts at its first job
    num_layers = engine.pair.layout.num_layers
    recorder = Recorder()
    sys.setprofile(recorder)
    threading.setprofile(recorder)
    try:
        click(explorer, [0.2] * num_layers)  # warm: imports, first touches, the base answer
        recorder.active = True
        click(explorer, [0.3] * num_layers)  # a plan the weights do not hold: it must be applied
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    threads = sorted({t for t, _, _ in recorder.calls})
    files = sorted({str(Path(f).relative_to(ROOT)) for _, f, _ in recorder.calls})
    print(json.dumps({"calls": len(recorder.calls), "functions": len({(f, n) for _, f, n in recorder.calls}),
                      "files": len(files), "threads": len(threads), "hand_offs": len(threads) - 1,
                      "reached_write": recorder.written.is_set(), "path_files": files}))


if __name__ == "__main__":
    main()
