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

Run (after `pip install -e .`): python benchmarks/switch.py [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

import merging
from toy.tiny import DecoderShape, build_qwen_pair

SHAPE = DecoderShape(hidden_size=1024, num_hidden_layers=20, num_attention_heads=16,
                     num_key_value_heads=4, intermediate_size=4096)
ALPHA = 0.4


def log(msg: str) -> None:
    print(f"[switch] {msg}", file=sys.stderr, flush=True)


def plan(components: list[str], curve: dict) -> merging.MergePlan:
    return merging.MergePlan.from_dict({"rules": [{"components": components, "method": "linear", "curve": curve}]})


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


def copy_bandwidth(device: str, sync, nbytes: int = 256 * 2**20) -> float:
    src = torch.randn(nbytes // 2, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), sync)[0] for _ in range(5)]
    return 2 * nbytes / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    device = parser.parse_args().device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t0 = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_s, (vlm_dir, llm_dir) = timed(lambda: build_qwen_pair(root, SHAPE, dtype=torch.bfloat16, noise=0.3), sync)
        log(f"built pair in {build_s:.1f}s")
        pair = merging.load_pair(vlm_dir, llm_dir, dtype="bfloat16", device=device)
        engine = merging.MergeEngine(pair)
        slots, L = pair.layout.slots, pair.layout.num_layers
        params = dict(pair.vlm.named_parameters())
        nbytes = lambda s: params[s.name].numel() * params[s.name].element_size()  # noqa: E731
        log(f"loaded pair: {sum(p.numel() for p in pair.vlm.parameters()) / 1e9:.3f} B params, {L} layers")

        attn = plan(["self_attn"], {"preset": "constant", "value": ALPHA})
        full = plan(["all"], {"preset": "constant", "value": ALPHA})
        custom = plan(["all"], {"preset": "custom", "values": [ALPHA] * L})
        one = [ALPHA] * L
        one[L // 2] = 0.7  # a middle layer: layer 0's α would also move embed/norm/lm_head
        custom_one = plan(["all"], {"preset": "custom", "values": one})

        warm_s, _ = timed(lambda: (engine.apply(full), engine.restore()), sync)
        log(f"warm-up apply+restore (verifies originals) {warm_s:.2f}s")
        apply_attention_s, _ = median_apply(engine, attn, sync, engine.restore)
        apply_full_s, full_report = median_apply(engine, full, sync, engine.restore)
        extra_resident, donor_used = engine.extra_resident_bytes(), engine.donor_bytes_used()
        restore_s, _ = median_apply(engine, merging.MergePlan(), sync, lambda: engine.apply(full))
        apply_one_layer_s, one_report = median_apply(engine, custom_one, sync, lambda: engine.apply(custom))
        log(f"apply attn {apply_attention_s:.3f}s, full {apply_full_s:.3f}s, one layer {apply_one_layer_s:.3f}s")

        bandwidth = copy_bandwidth(device, sync)
        rebuild_s, reload_s = rebuild(pair, vlm_dir, llm_dir, root / "rebuilt", sync)
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
        }
    log(f"total {time.perf_counter() - t0:.1f}s")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
