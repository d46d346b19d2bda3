"""Fault injection: failures during apply or generation leave the weights at a known plan, bit for bit,
and the service keeps answering; a kill -9 during cache writes loses at most the entry in flight."""

import multiprocessing
import os
import signal

import pytest
import torch

from cache import AnswerCache
from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, load_pair
from merging.run.answerer import Answerer

PLAN = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.4}}]})


def test_out_of_memory_during_apply_keeps_the_previous_plan(qwen_pair, failing_method):
    oom = failing_method("oom_on_fifth", 5, torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    engine = MergeEngine(qwen_pair)
    engine.apply(PLAN)
    expected = lm_state(qwen_pair)
    failing = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": oom,
                                              "curve": {"preset": "constant", "value": 0.9}}]})
    with pytest.raises(torch.OutOfMemoryError):
        engine.apply(failing)
    assert_same_weights(qwen_pair, expected)
    assert engine.plan == PLAN
    assert Answerer(engine).ask(PLAN, "Still there?")["answer"] is not None


def test_failure_during_generation_leaves_weights_at_the_plan_and_serving(qwen_dirs, tmp_path):
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair)
    answerer = Answerer(engine, AnswerCache(tmp_path / "cache"))
    reference = MergeEngine(load_pair(*qwen_dirs))
    reference.apply(PLAN)
    expected = lm_state(reference.pair)

    def boom(module, args):
        raise RuntimeError("device lost mid-generation (simulated)")

    handle = pair.vlm.get_decoder().layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="device lost"):
        answerer.ask(PLAN, "How many?")
    handle.remove()
    assert engine.plan == PLAN
    assert_same_weights(pair, expected)
    assert answerer.cache.stats()["entries"] == 0  # nothing half-written was stored
    assert answerer.ask(PLAN, "How many?")["cached"] is False  # and it serves again


def _write_forever(directory: str, ready) -> None:
    store = AnswerCache(directory)
    i = 0
    while True:
        store.put({"i": i}, {"answer": "x" * 5000, "i": i})
        i += 1
        if i == 50:
            ready.set()


def test_kill_9_during_cache_writes_loses_at_most_the_entry_in_flight(tmp_path):
    ready = multiprocessing.get_context("spawn").Event()
    process = multiprocessing.get_context("spawn").Process(target=_write_forever, args=(str(tmp_path), ready))
    process.start()
    assert ready.wait(60)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    store = AnswerCache(tmp_path)
    entries = store.entries()
    written = sorted(e["result"]["i"] for e in entries)
    assert written == list(range(len(written))) and len(written) >= 50  # a gap-free prefix survived
    assert all(store.get({"i": i})["i"] == i for i in written)
    assert store.get({"i": len(written)}) is None  # the one in flight, at most, is gone
