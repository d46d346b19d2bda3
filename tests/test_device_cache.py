"""The write path's helpers, exercised on the CPU: the device cache (budget, LRU eviction), the staging
buffers, the CPU write pool, and the engine's weights with and without them (bit for bit); plus
benchmarks/gpu_check.sh on a machine without CUDA."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import merging.engine.cpu_pool as cpu_pool
from merging import MergeEngine, MergePlan, MergescopeError, load_pair
from merging.engine.cpu_pool import CpuPool
from merging.engine.device_cache import DeviceCache, budget_from_gb, default_budget
from merging.engine.staging import Feeder, Stager
from tests.conftest import assert_same_weights, lm_state

ROOT = Path(__file__).resolve().parents[1]


def t(n: int, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.zeros(n, dtype=dtype)


# -- DeviceCache ----------------------------------------------------------------------------------
def test_cache_keeps_within_budget_and_evicts_least_recently_used():
    cache = DeviceCache(budget=300, device="cpu")  # 150 bf16 elements
    assert cache.put("a", t(50)) and cache.put("b", t(50)) and cache.put("c", t(50))
    assert cache.used == 300
    assert cache.get("a") is not None  # a is now the most recent: b goes first
    assert cache.put("d", t(50))
    assert "b" not in cache and {"a", "c", "d"} <= set(cache._entries)
    assert cache.put("e", t(100))  # needs two slots: c, then a, the least recently used
    assert "c" not in cache and "a" not in cache and "d" in cache and "e" in cache
    assert cache.used == 300 and cache.evictions == 3
    assert cache.get("zzz") is None and cache.misses == 1


def test_cache_refuses_what_cannot_fit_and_replaces_a_key():
    cache = DeviceCache(budget=100, device="cpu")
    assert not cache.put("big", t(51))  # 102 bytes > the whole budget: never cached
    assert len(cache) == 0 and cache.used == 0
    assert cache.put("k", t(10)) and cache.put("k", t(20))
    assert cache.used == 40 and len(cache) == 1
    assert not DeviceCache(budget=0, device="cpu").put("x", t(1))
    with pytest.raises(ValueError):
        DeviceCache(budget=-1, device="cpu")


def test_default_budget_is_zero_on_the_cpu_and_the_flag_converts():
    assert default_budget("cpu") == 0
    assert budget_from_gb(None) is None and budget_from_gb(0) == 0 and budget_from_gb(1.5) == 1_500_000_000
    with pytest.raises(MergescopeError):
        budget_from_gb(-1)


# -- Stager / Feeder ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int8, torch.bool])
def test_staging_copies_bit_exact_through_rotating_buffers(dtype):
    stager = Stager("cpu", buffer_bytes=96)  # many pieces per tensor, both buffers reused
    gen = torch.Generator().manual_seed(0)
    for shape in [(0,), (1,), (7, 13), (3, 5, 17), (1000,)]:
        host = (torch.randn(shape, generator=gen) * 100).to(dtype)
        out = stager.to_device(host)
        assert out.dtype == host.dtype and out.shape == host.shape
        if host.numel():
            assert out.data_ptr() != host.data_ptr()
            assert torch.equal(out.view(-1).view(torch.uint8), host.view(-1).view(torch.uint8))
    assert stager.host_bytes() == 2 * 96


def test_feeder_caches_own_copies_and_reports_host_bytes():
    feeder = Feeder("cpu", cache_bytes=1000, staging=False)
    host = torch.arange(100, dtype=torch.float32)  # 400 bytes
    calls = []
    first = feeder.fetch("k", lambda: calls.append(1) or host)
    assert torch.equal(first, host) and first.data_ptr() != host.data_ptr()  # the cache owns a copy
    assert feeder.fetch("k", lambda: calls.append(1) or host) is first and len(calls) == 1
    assert feeder.host_bytes() == 400
    uncached = Feeder("cpu", cache_bytes=0, staging=False)
    assert uncached.fetch("k", lambda: host) is host and uncached.host_bytes() == 0


# -- CpuPool --------------------------------------------------------------------------------------
def test_pool_chunked_lerp_and_copy_equal_whole_tensor_calls(monkeypatch):
    monkeypatch.setattr(cpu_pool, "POOL_JOB_ELEMENTS", 1000)
    pool = CpuPool(workers=3)
    gen = torch.Generator().manual_seed(3)
    cases = []
    for n in (10, 999, 1000, 1001, 12345, 54321):
        a, b = torch.randn(n, generator=gen).bfloat16(), torch.randn(n, generator=gen).bfloat16()
        for alpha in (0.3, 0.5, 0.7):
            out = torch.empty_like(a)
            pool.submit(lambda o, v, d, w=alpha: torch.lerp(v, d, w, out=o), out, a, b)
            cases.append((out, torch.lerp(a, b, alpha)))
        copy = torch.empty_like(a)
        pool.submit(torch.Tensor.copy_, copy, a)
        cases.append((copy, a))
    pool.finish()
    assert all(torch.equal(got, want) for got, want in cases)


def test_pool_reraises_the_first_error_after_everything_ran(monkeypatch):
    monkeypatch.setattr(cpu_pool, "POOL_JOB_ELEMENTS", 10)
    pool = CpuPool(workers=2)
    out = torch.zeros(100)

    def boom(o, v):
        raise RuntimeError("chunk failed")
    pool.submit(boom, out, out.clone())
    later = torch.zeros(100)
    pool.submit(torch.Tensor.copy_, later, torch.ones(100))
    with pytest.raises(RuntimeError, match="chunk failed"):
        pool.finish()
    assert torch.equal(later, torch.ones(100))
    pool.finish()  # the error was handed over once


def test_pool_leaves_the_callers_thread_count_alone():
    before = torch.get_num_threads()
    pool = CpuPool(workers=2)
    pool.submit(torch.Tensor.copy_, torch.zeros(10), torch.ones(10))
    pool.finish()
    assert torch.get_num_threads() == before


# -- the engine with and without cache/staging/pool ---------------------------------------------------
def _random_plans(rng: random.Random, num_layers: int, n: int) -> list[MergePlan]:
    components = [["self_attn"], ["mlp"], ["norms"], ["embed_tokens", "lm_head"], ["q_proj", "down_proj"], ["all"]]
    plans = []
    for _ in range(n):
        rules = []
        for _ in range(rng.randrange(1, 4)):
            curve = rng.choice([{"preset": "constant", "value": rng.choice([0.0, 0.3, 0.5, 1.0])},
                                {"preset": "custom", "values": [rng.random() for _ in range(num_layers)]}])
            rules.append({"components": rng.choice(components), "method": rng.choice(["linear", "linear", "slerp"]),
                          "curve": curve})
        plans.append(MergePlan.from_dict({"rules": rules}))
    return plans + [MergePlan()]  # the pure VLM: a restore


@pytest.mark.parametrize("dirs", ["qwen_dirs", "qwen_bf16_dirs", "llava_dirs"])
def test_same_weights_with_and_without_cache_staging_and_pool(request, dirs, monkeypatch):
    monkeypatch.setattr(cpu_pool, "POOL_JOB_ELEMENTS", 257)  # tiny tensors still get cut into chunks
    vlm_dir, llm_dir = request.getfixturevalue(dirs)
    plain_pair, cached_pair = load_pair(vlm_dir, llm_dir), load_pair(vlm_dir, llm_dir)
    plain = MergeEngine(plain_pair, write_workers=1)
    params = dict(cached_pair.vlm.named_parameters())
    largest = max(params[s.name].numel() * params[s.name].element_size() for s in cached_pair.layout.slots)
    # a budget that holds a few tensors: applies both hit and evict
    cached = MergeEngine(cached_pair, device_cache_bytes=4 * largest, staging=True, write_workers=3)
    cached._feeder(torch.device("cpu")).stager.buffer_bytes = 1000
    rng = random.Random(16)
    plans = _random_plans(rng, plain_pair.layout.num_layers, 8)
    for p in plans + rng.sample(plans, len(plans)):
        plain.apply(p)
        cached.apply(p)
        assert_same_weights(cached_pair, lm_state(plain_pair))
    stats = cached.device_cache_stats()
    assert stats["hits"] > 0 and stats["evictions"] > 0 and stats["used"] <= stats["budget"]
    assert cached.extra_resident_bytes() == stats["used"] + 2 * 1000
    cached.restore()
    for slot in cached_pair.layout.slots:  # bit-exact restore from the cache's copies
        param = params[slot.name]
        assert torch.equal(param.detach(), cached_pair.vlm_files.get(slot.vlm_key).to(param.dtype))


def test_default_engine_holds_no_extra_memory_on_the_cpu(qwen_dirs):
    engine = MergeEngine(load_pair(*qwen_dirs))
    engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]}))
    assert engine.extra_resident_bytes() == 0
    assert engine.device_cache_stats()["budget"] == 0


def test_a_failing_pooled_write_is_recovered(qwen_bf16_dirs, monkeypatch):
    monkeypatch.setattr(cpu_pool, "POOL_JOB_ELEMENTS", 257)
    pair = load_pair(*qwen_bf16_dirs)  # bf16: linear is one torch.lerp per chunk
    engine = MergeEngine(pair)
    before = lm_state(pair)
    calls = {"n": 0}
    real = torch.lerp

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("lerp failed")
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "lerp", flaky)
    with pytest.raises(RuntimeError, match="lerp failed"):
        engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"],
                                                     "curve": {"preset": "constant", "value": 0.4}}]}))
    assert engine.plan == MergePlan()
    assert_same_weights(pair, before)


# -- benchmarks/gpu_check.sh without CUDA -----------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA path is not what runs")
def test_gpu_check_says_no_cuda_and_exits_zero(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cuda"] is False and "no CUDA" in result["reason"]
    assert list(tmp_path.iterdir()) == []  # wrote nothing


def test_gpu_check_measures_a_tiny_pair_on_the_cpu(tmp_path):
    """The CUDA script's Python half, run end to end on a tiny pair (its figures mean nothing here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--work", str(tmp_path), "--device", "cpu",
                           "--shape", "tiny", "--repeats", "1", "--new-tokens", "4"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["same_weights_with_cache"] and result["restore_bit_exact"]
    assert result["device_cache"]["hits"] > 0 and result["extra_device_bytes"] > 0
    for key in ("apply_attention_s", "apply_full_s", "apply_one_layer_s", "restore_s"):
        assert result["no_cache"][key] > 0 and result["with_cache"][key] > 0
    assert result["tokens_per_s_batch1"] > 0 and result["tokens_per_s_batch32"] > 0
    assert result["sweep_answers_per_s_batched32"] > 0 and result["sweep_answers_per_s_one_at_a_time"] > 0
