"""The answers cache on a real diskcache directory, through the real engine and models."""

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import diskcache
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from cache import AnswerCache, config_key
from merging import MergeEngine, MergePlan, MergescopeError, load_pair
from merging.io.checkpoint import Checkpoint
from merging.run.generate import GenerationSettings
from merging.run.answerer import Answerer
from toy.tiny import build_qwen_pair

PLAN = MergePlan.from_dict({"rules": [{"components": ["self_attn"], "curve": {"preset": "constant", "value": 0.5}}]})
IMAGE = Image.new("RGB", (56, 56), (10, 200, 10))


@pytest.fixture
def answerer(qwen_pair, tmp_path):
    return Answerer(MergeEngine(qwen_pair), AnswerCache(tmp_path / "cache"))


def test_hit_skips_the_model(answerer):
    first = answerer.ask(PLAN, "How many?", IMAGE)
    assert first["cached"] is False and answerer.engine.plan == PLAN
    answerer.engine.restore()
    again = answerer.ask(PLAN, "How many?", IMAGE)
    assert again["cached"] is True and again["answer"] == first["answer"]
    assert answerer.engine.plan == MergePlan()  # served from disk: the weights were not touched
    assert answerer.ask(PLAN, "How many?", Image.new("RGB", (56, 56), (200, 10, 10)))["cached"] is False
    assert answerer.ask(MergePlan(), "How many?", IMAGE)["cached"] is False


def test_hit_in_a_new_process(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    args = [sys.executable, "-m", "merging", "answer", "--vlm", vlm, "--llm", llm, "--question", "Count them",
            "--cache-dir", tmp_path / "c", "--json"]
    runs = [json.loads(subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=300,
                                      check=True).stdout) for _ in range(2)]
    assert [r["cached"] for r in runs] == [False, True] and runs[0]["answer"] == runs[1]["answer"]
    listing = subprocess.run([sys.executable, "-m", "merging", "cache", "ls", "--cache-dir", str(tmp_path / "c"),
                              "--json"], capture_output=True, text=True, timeout=120, check=True)
    entries = json.loads(listing.stdout)["entries"]
    assert len(entries) == 1 and entries[0]["question"] == "Count them" and entries[0]["plan"] == {"rules": []}
    cleared = subprocess.run([sys.executable, "-m", "merging", "cache", "clear", "--cache-dir", str(tmp_path / "c"),
                              "--json"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(cleared.stdout) == {"cleared": 1}


def test_changed_donor_weights_miss(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    store = AnswerCache(tmp_path / "cache")
    assert Answerer(MergeEngine(load_pair(vlm, llm)), store).ask(PLAN, "How many?")["cached"] is False
    retrained = tmp_path / "llm2"
    shutil.copytree(llm, retrained)
    weights = load_file(retrained / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.weight"] += 0.01
    save_file(weights, retrained / "model.safetensors", metadata={"format": "pt"})
    pair = load_pair(vlm, retrained)
    assert Answerer(MergeEngine(pair), store).ask(PLAN, "How many?")["cached"] is False
    assert Answerer(MergeEngine(pair), store).ask(PLAN, "How many?")["cached"] is True


def test_corrupt_and_foreign_entries_are_recomputed(answerer):
    config = answerer.config(PLAN, "How many?", IMAGE, GenerationSettings())
    first = answerer.ask(PLAN, "How many?", IMAGE)
    db = sqlite3.connect(answerer.cache.directory / "cache.db")
    db.execute("UPDATE Cache SET value = ?", (b"\x00\xffnot zlib",))
    db.commit()
    db.close()
    recomputed = answerer.ask(PLAN, "How many?", IMAGE)
    assert recomputed["cached"] is False and recomputed["answer"] == first["answer"]
    assert answerer.ask(PLAN, "How many?", IMAGE)["cached"] is True
    answerer.cache._cache.set(config_key(config), {"answer": "planted by someone else"})  # foreign shape
    after_foreign = answerer.ask(PLAN, "How many?", IMAGE)
    assert after_foreign["cached"] is False and after_foreign["answer"] == first["answer"]
    assert answerer.cache.entries()[0]["result"]["answer"] == first["answer"]


def test_values_are_json_never_pickles(answerer):
    answerer.ask(PLAN, "How many?", IMAGE)
    assert isinstance(answerer.cache._cache.disk, diskcache.JSONDisk)
    db = sqlite3.connect(answerer.cache.directory / "cache.db")
    modes = {mode for (mode,) in db.execute("SELECT mode FROM Cache")}
    db.close()
    assert modes and diskcache.core.MODE_PICKLE not in modes
    (entry,) = answerer.cache.entries()
    assert entry["result"]["tokens"] > 0 and entry["result"]["seconds"] > 0 and entry["created_at"] > 0
    assert entry["config"]["question"] == "How many?" and entry["config"]["plan"] == PLAN.to_dict()
    stats = answerer.cache.stats()
    assert stats["entries"] == 1 and stats["bytes"] > 0


def test_config_key_is_canonical():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    with pytest.raises(ValueError):
        config_key({"a": float("nan")})


def test_stream_grows_then_caches(answerer):
    updates = list(answerer.stream(PLAN, "Describe it.", IMAGE))
    assert len(updates) >= 2 and updates[-1]["done"] and not any(u["done"] for u in updates[:-1])
    assert updates[-1]["answer"] == answerer.ask(PLAN, "Describe it.", IMAGE)["answer"]
    (hit,) = list(answerer.stream(PLAN, "Describe it.", IMAGE))
    assert hit["cached"] and hit["done"] and hit["answer"] == updates[-1]["answer"]



def _lock_is_free(engine, within_s: float = 60.0) -> bool:
    """Whether another thread can take (and give back) the engine lock within `within_s`."""
    taken = []

    def probe():
        if engine.lock.acquire(timeout=within_s):
            engine.lock.release()
            taken.append(True)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return bool(taken)


def _next_in_new_thread(iterator):
    """next(iterator) on a fresh thread, as Gradio does: each step of a generator may run on another worker."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(next, iterator, None).result(timeout=120)


def test_stream_resumed_from_other_threads_releases_the_lock(answerer):
    updates = answerer.stream(PLAN, "Describe it.", IMAGE)
    steps = [_next_in_new_thread(updates)]
    while steps[-1] is not None:
        steps.append(_next_in_new_thread(updates))
    assert steps[-2]["done"] and steps[-2]["answer"] == answerer.ask(PLAN, "Describe it.", IMAGE)["answer"]
    assert _lock_is_free(answerer.engine)


def test_abandoned_stream_releases_the_lock(answerer):
    updates = answerer.stream(PLAN, "Describe it in detail.", IMAGE, GenerationSettings(max_new_tokens=24))
    first = _next_in_new_thread(updates)
    assert first is not None and not first["done"]
    # the consumer goes away (a closed browser tab) without closing the generator: generation still
    # ends on its own thread and gives the lock back, so the next user is served
    assert _lock_is_free(answerer.engine)
    assert answerer.ask(MergePlan(), "Next user?")["answer"] is not None
    del updates


def test_a_closed_stream_stops_generating_at_once(answerer):
    long = GenerationSettings(max_new_tokens=4000)  # minutes of generation if it ran to the end
    updates = answerer.stream(PLAN, "Describe it in detail.", IMAGE, long)
    assert not _next_in_new_thread(updates)["done"]
    start = time.perf_counter()
    updates.close()  # what garbage collection or Gradio does with a stream nobody reads any more
    assert _lock_is_free(answerer.engine, within_s=30)
    assert time.perf_counter() - start < 10
    assert answerer.cache.stats()["entries"] == 0  # a cut-short answer is never stored


def test_each_request_names_its_donor(qwen_dirs, tmp_path):
    other = Checkpoint(build_qwen_pair(tmp_path / "other", seed=7)[1])
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.7}}]})
    answerer = Answerer(MergeEngine(load_pair(*qwen_dirs)), AnswerCache(tmp_path / "cache"), donors={"other": other})
    theirs_alone = Answerer(MergeEngine(load_pair(qwen_dirs[0], other.path)))
    mine_alone = Answerer(MergeEngine(load_pair(*qwen_dirs)))
    question = "What is it?"
    theirs = answerer.ask(plan, question, IMAGE, donor="other")
    assert answerer.engine.pair.donor is other and not theirs["cached"]
    assert theirs["answer"] == theirs_alone.ask(plan, question, IMAGE)["answer"]
    mine = answerer.ask(plan, "And now?", IMAGE)  # switched back to the pair's own donor, computed
    assert mine["answer"] == mine_alone.ask(plan, "And now?", IMAGE)["answer"]
    assert answerer.config(plan, question, IMAGE, GenerationSettings()) != \
        answerer.config(plan, question, IMAGE, GenerationSettings(), donor="other")
    answerer.ask(MergePlan(), question, IMAGE)
    assert answerer.ask(MergePlan(), question, IMAGE, donor="other")["cached"]  # the pure VLM has no donor
    # what export uses: that donor in, no other job beside it
    assert answerer.run(lambda engine: (engine.pair.donor, engine.plan), "other") == (other, MergePlan())
    with pytest.raises(MergescopeError, match="unknown donor 'nobody'"):
        answerer.ask(plan, question, IMAGE, donor="nobody")
