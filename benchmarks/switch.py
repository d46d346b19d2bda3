"""Switch-cost benchmark: in-place plan switching vs. the rebuild-a-checkpoint workflow.

Builds a Qwen2.5-VL-shaped VLM (≥ 0.3 B parameters, bf16) and its donor LLM in a temporary folder,
loads them with `merging.load_pair`, and prints ONE JSON object to stdout (logs go to stderr):

- apply_attention_s   seconds for engine.apply of a constant-α linear plan on `self_attn` only,
                      starting from the pure VLM (median of 3; the restore in between is not timed)
- apply_full_s        the same for components ["all"] (the whole language model)
- apply_one_layer_s   with a full per-layer (custom curve) plan applied, re-apply it with one middle
                      layer's α changed; `one_layer_written` = tensors written (only that layer's)
- restore_s           engine.restore() after a full apply (median of 3)
- rebuild_s           what a checkpoint tool (mergekit) pays per configuration: read both
                      safetensors, torch.lerp every language-model tensor, keep the vision tower,
                      save_file a new folder (+ the VLM's config/processor files), from_pretrained it
- reload_s            only the from_pretrained part of rebuild_s
- rebuild_over_apply  rebuild_s / apply_attention_s                         target ≥ 50
- bandwidth_fraction  (bytes_read + bytes_written) / apply_full_s of the full apply, divided by
                      the bandwidth of a plain `dst.copy_(src)` of 256 MiB bf16   target ≥ 0.4
- extra_resident_bytes, donor_bytes_used   engine figures after the full apply
                      target: extra_resident_bytes ≤ donor_bytes_used
- restore_bit_exact   after everything, every merged parameter equals the VLM file bit for bit
- params, language_model_bytes, attention_bytes, torch_threads, device

The switch beside its memory-traffic limit (`switch_figures`), for the attention-only and the full plan:
- first_apply_{attention,full}_s   the FIRST apply of the session (a fresh engine: originals verified on
                      first touch; on the CPU the pair's files are first dropped from the page cache with
                      posix_fadvise, so their pages are read from disk as a user's first switch reads them)
- switch_{attention,full}_s    median of `--repeats` switches α 0.4 ↔ 0.5 of the same plan (every
                      tensor of the plan changes; no restore in between)
- limit_{attention,full}_s     in the same run, interleaved with the switches: one torch.lerp(V, L, α,
                      out=θ) per tensor over exactly the tensors the switch writes, on views prepared
                      beforehand (one pass over memory: what the switch cannot beat)
- switch_over_limit_{attention,full}   median over the repeats of switch / the limit measured right
                      after it (the way with the lower median)                 target ≤ 1.2
- per_tensor_overhead_us_{attention,full}   (switch − limit) / tensors written
- tensors_{attention,full}     tensors a switch writes
- limit_{attention,full}_{openmp,threads}_s   the limit's two ways (see `limit_writes`); the limit
                      is the faster one
- switch_grouped_{attention,full}_s   the same switches written by the caller's group calls
                      (merging/engine/fused.py, torch's own threads) instead of the CPU write pool: CPU only

Run (after `pip install -e .`): python benchmarks/switch.py [--device cuda] [--repeats 21] [--pair-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

import merging
import merging.engine.cpu_pool
from toy.tiny import DecoderShape, build_qwen_pair

SHAPE = DecoderShape(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16,
                     num_key_value_heads=4, intermediate_size=4096)
ALPHA = 0.4
SWITCH_TO = 0.5  # a switch: ALPHA ↔ SWITCH_TO


def log(msg: str) -> None:
    print(f"[switch] {msg}", file=sys.stderr, flush=True)


def plan(components: list[str], curve: dict) -> merging.MergePlan:
    return merging.MergePlan.from_dict({"rules": [{"components": components, "method": "linear", "curve": curve}]})


def constant(components: list[str], alpha: float) -> merging.MergePlan:
    return plan(components, {"preset": "constant", "value": alpha})


def pair_folders(root: Path, sync) -> tuple[float, tuple[Path, Path]]:
    """(seconds spent building, (vlm_dir, llm_dir)): the pair in `root`, built there unless it already is."""
    if (root / "llm" / "config.json").is_file():
        return 0.0, (root / "vlm", root / "llm")
    return timed(lambda: build_qwen_pair(root, SHAPE, dtype=torch.bfloat16, noise=0.3), sync)


def timed(fn, sync) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def median_apply(engine, p, sync, setup, repeats=3) -> tuple[float, merging.ApplyReport]:
    """Median seconds of engine.apply(p), each run preceded by the untimed `setup()`."""
    times, report = [], None
    for _ in range(repeats):
        setup()
        seconds, report = timed(lambda: engine.apply(p), sync)
        times.append(seconds)
    return statistics.median(times), report


def rebuild(pair: merging.ModelPair, vlm_dir: Path, llm_dir: Path, out: Path, sync) -> tuple[float, float]:
    """The checkpoint workflow for one configuration; returns (total seconds, from_pretrained seconds)."""
    start = time.perf_counter()
    state = load_file(str(vlm_dir / "model.safetensors"))
    donor = load_file(str(llm_dir / "model.safetensors"))
    read_end = time.perf_counter()
    for slot in pair.layout.slots:
        state[slot.vlm_key] = torch.lerp(state[slot.vlm_key], donor[slot.donor_key], ALPHA)
    merge_end = time.perf_counter()
    out.mkdir()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    log(f"rebuild phases: read {read_end - start:.2f}s, lerp {merge_end - read_end:.2f}s, "
        f"save {time.perf_counter() - merge_end:.2f}s")
    for f in vlm_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(f, out / f.name)
    del state, donor
    reload_start = time.perf_counter()
    placement = {} if pair.vlm.device.type == "cpu" else {"device_map": pair.vlm.device.type}
    model = transformers.AutoModelForImageTextToText.from_pretrained(out, dtype=torch.bfloat16, **placement)
    sync()
    end = time.perf_counter()
    del model
    return end - start, end - reload_start


def drop_page_cache(folders: list[Path]) -> None:
    """Evict the folders' safetensors from the page cache (written back first): the next read is cold.
    Only these files' pages are dropped (posix_fadvise), nothing else on the machine."""
    for folder in folders:
        for f in folder.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def limit_writes(engine, names: list[str], alphas: tuple[float, ...]) -> dict:
    """The switch's memory-traffic limit: one torch.lerp(V, L, α, out=θ) per tensor `names` lists, on
    views (and device copies) prepared here, run two ways: {"openmp": a plain loop with torch's own
    threads, "threads": the tensors cut into 2 Mi-element pieces that `workers` single-threaded threads
    take from one list} (CPU only; the better of the two is the limit), for each α of `alphas`:
    {α: {way: run}}. Each writes what the linear plan at α holds, so the weights are unchanged when the
    engine holds that plan. Assumes linear plans of half-type tensors."""
    pair, params = engine.pair, dict(engine.pair.vlm.named_parameters())
    slots = {s.name: s for s in pair.layout.slots}
    work = []
    for name in names:
        slot, param = slots[name], params[name]
        rows = slot.shared_rows or param.shape[0]
        vlm = pair.vlm_files.get(slot.vlm_key)[:rows].to(param.device)
        donor = pair.donor.get(slot.donor_key)[:rows].to(param.device)
        work.append((param.detach()[:rows], vlm, donor))

    pieces = [tuple(t.view(-1)[i:i + 2**21] for t in (out, vlm, donor))
              for out, vlm, donor in work for i in range(0, out.numel(), 2**21)]
    on_cpu = params[names[0]].device.type == "cpu"
    return {alpha: {"openmp": lambda alpha=alpha: _lerps(work, alpha),
                    **({"threads": lambda alpha=alpha: _threaded_lerps(pieces, alpha, engine._pool.workers)}
                       if on_cpu else {})} for alpha in alphas}


def _lerps(work: list[tuple], alpha: float) -> None:
    for out, vlm, donor in work:
        torch.lerp(vlm, donor, alpha, out=out)


def _threaded_lerps(pieces: list[tuple], alpha: float, workers: int) -> None:
    taken = itertools.count()  # each piece handed out once, in order, across the threads

    def worker() -> None:
        torch.set_num_threads(1)
        for k in taken:
            if k >= len(pieces):
                return
            _lerps(pieces[k:k + 1], alpha)
    runners = [threading.Thread(target=worker) for _ in range(workers)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()


def switch_figures(engine, plans: dict[str, tuple], sync, repeats: int, cold_dirs: list[Path] | None) -> dict:
    """First apply, warm switch and the limit for each plan: plans = {label: (plan at ALPHA, plan at
    SWITCH_TO)}; a fresh engine's first apply comes first (see the module docstring)."""
    out = {}
    for label, (at, to) in plans.items():
        engine.restore()
        if cold_dirs:
            drop_page_cache(cold_dirs)
        fresh = merging.MergeEngine(engine.pair)
        out[f"first_apply_{label}_s"], _ = timed(lambda: fresh.apply(at), sync)
        fresh.restore()
        engine.apply(at)
        report = engine.apply(to)
        limits = limit_writes(engine, report.written, (SWITCH_TO, ALPHA))
        switches, bounds = [], {way: [] for way in limits[ALPHA]}
        for i in range(repeats):  # the weights hold `to` after the report's apply
            switches.append(timed(lambda: engine.apply(at if i % 2 == 0 else to), sync)[0])
            for way, run in limits[ALPHA if i % 2 == 0 else SWITCH_TO].items():  # the α just applied
                bounds[way].append(timed(run, sync)[0])
        medians = {way: statistics.median(times) for way, times in bounds.items()}
        switch, bound = statistics.median(switches), min(medians.values())
        # each switch against the limit measured right after it (the way with the lower median: the
        # lower of two noisy samples each time would bias the ratio up): the load changes less between
        best = min(medians, key=medians.get)
        ratio = statistics.median(t / b for t, b in zip(switches, bounds[best]))
        out.update({f"limit_{label}_{way}_s": t for way, t in medians.items()})
        out.update({f"switch_{label}_s": switch, f"limit_{label}_s": bound,
                    f"switch_over_limit_{label}": ratio, f"tensors_{label}": len(report.written),
                    f"per_tensor_overhead_us_{label}": (switch - bound) / len(report.written) * 1e6})
        if engine.pair.vlm.device.type == "cpu":  # the group calls of merging/engine/fused.py instead of the pool
            least, merging.engine.cpu_pool.POOL_MIN_ELEMENTS = merging.engine.cpu_pool.POOL_MIN_ELEMENTS, 2**62
            try:
                engine.apply(at)
                grouped = [timed(lambda i=i: engine.apply(at if i % 2 else to), sync)[0] for i in range(repeats)]
            finally:
                merging.engine.cpu_pool.POOL_MIN_ELEMENTS = least
            out[f"switch_grouped_{label}_s"] = statistics.median(grouped)
        log(f"{label}: first {out[f'first_apply_{label}_s']:.3f}s, switch {switch * 1e3:.1f} ms, "
            f"limit {bound * 1e3:.1f} ms ({ratio:.2f}×)")
    engine.restore()
    return out


def copy_bandwidth(device: str, sync, nbytes: int = 256 * 2**20) -> float:
    src = torch.randn(nbytes // 2, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), sync)[0] for _ in range(5)]
    return 2 * nbytes / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=21, help="switches (and limits) per plan")
    parser.add_argument("--pair-dir", help="build the pair here once and reuse it (default: a temporary folder)")
    args = parser.parse_args()
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()

    if args.pair_dir:
        Path(args.pair_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.pair_dir) as tmp:
        build_s, (vlm_dir, llm_dir) = pair_folders(Path(args.pair_dir or tmp), sync)
        log(f"built pair in {build_s:.1f}s")
        pair = merging.load_pair(vlm_dir, llm_dir, dtype="bfloat16", device=device)
        engine = merging.MergeEngine(pair)
        slots, L = pair.layout.slots, pair.layout.num_layers
        params = dict(pair.vlm.named_parameters())
        nbytes = lambda s: params[s.name].numel() * params[s.name].element_size()  # noqa: E731
        log(f"loaded pair: {sum(p.numel() for p in pair.vlm.parameters()) / 1e9:.3f} B params, {L} layers")

        attn, full = constant(["self_attn"], ALPHA), constant(["all"], ALPHA)
        custom = plan(["all"], {"preset": "custom", "values": [ALPHA] * L})
        one = [ALPHA] * L
        one[L // 2] = 0.7  # a middle layer: layer 0's α would also move embed/norm/lm_head
        custom_one = plan(["all"], {"preset": "custom", "values": one})

        figures = switch_figures(engine, {"attention": (attn, constant(["self_attn"], SWITCH_TO)),
                                          "full": (full, constant(["all"], SWITCH_TO))},
                                 sync, args.repeats, [vlm_dir, llm_dir] if device == "cpu" else None)
        warm_s, _ = timed(lambda: (engine.apply(full), engine.restore()), sync)
        log(f"warm-up apply+restore (verifies originals) {warm_s:.2f}s")
        apply_attention_s, _ = median_apply(engine, attn, sync, engine.restore)
        apply_full_s, full_report = median_apply(engine, full, sync, engine.restore)
        extra_resident, donor_used = engine.extra_resident_bytes(), engine.donor_bytes_used()
        restore_s, _ = median_apply(engine, merging.MergePlan(), sync, lambda: engine.apply(full))
        apply_one_layer_s, one_report = median_apply(engine, custom_one, sync, lambda: engine.apply(custom))
        log(f"apply attn {apply_attention_s:.3f}s, full {apply_full_s:.3f}s, one layer {apply_one_layer_s:.3f}s")

        bandwidth = copy_bandwidth(device, sync)
        rebuild_s, reload_s = rebuild(pair, vlm_dir, llm_dir, Path(tmp) / "rebuilt", sync)
        log(f"rebuild {rebuild_s:.2f}s (reload {reload_s:.2f}s)")

        engine.restore()
        bit_exact = all(torch.equal(params[s.name].detach().cpu(), pair.vlm_files.get(s.vlm_key)) for s in slots)

        moved = full_report.bytes_read + full_report.bytes_written
        result = {
            "apply_attention_s": apply_attention_s,
            "apply_full_s": apply_full_s,
            "apply_one_layer_s": apply_one_layer_s,
            "one_layer_written": len(one_report.written),
            "restore_s": restore_s,
            "rebuild_s": rebuild_s,
            "reload_s": reload_s,
            "rebuild_over_apply": rebuild_s / apply_attention_s,
            "bandwidth_fraction": (moved / apply_full_s) / bandwidth,
            "full_apply_bytes_moved": moved,
            "copy_bandwidth_gbps": bandwidth / 1e9,
            "extra_resident_bytes": extra_resident,
            "donor_bytes_used": donor_used,
            "restore_bit_exact": bit_exact,
            "params": sum(p.numel() for p in pair.vlm.parameters()),
            "language_model_bytes": sum(nbytes(s) for s in slots),
            "attention_bytes": sum(nbytes(s) for s in slots if s.group == "self_attn"),
            "build_s": build_s,
            "torch_threads": torch.get_num_threads(),
            "device": device,
            **figures,
            "load_average": os.getloadavg(),
        }
    log(f"total {time.perf_counter() - t0:.1f}s")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
