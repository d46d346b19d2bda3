"""Scaling benchmark (CPU): the engine at real text-model sizes, next to the mergekit workflow.

For each size, a Qwen2.5-VL-shaped VLM (small vision tower: the engine never touches it) and a Qwen2
donor with that size's REAL text configuration, random bf16 weights written shard by shard
(toy/sharded.py), in a temporary folder removed afterwards:

  0.3B  hidden 768,  12 layers, 12/2 heads, MLP 3072,  vocabulary 151936, untied
  1.5B  hidden 1536, 28 layers, 12/2 heads, MLP 8960,  vocabulary 151936, untied (Qwen2.5-1.5B's text)
  3B    hidden 2048, 36 layers, 16/2 heads, MLP 11008, vocabulary 151936, untied (Qwen2.5-VL-3B's text)
  0.5B  hidden 896,  24 layers, 14/2 heads, MLP 4864,  vocabulary 151936, tied (Qwen2.5-0.5B's text: an
        attention-only switch writes 168 tensors, 84 MiB)

One JSON row per size (medians of `--repeats`, each apply starting from the pure VLM):
params, build_s, load_s, first_apply_s (the first apply verifies every original it reads),
apply_attention_s / apply_full_s / apply_one_layer_s / restore_s, the bytes each moves and its GB/s,
bandwidth fractions (vs a plain 256 MiB bf16 `copy_` measured in the same run), RSS (anonymous and
file-backed, VmHWM) before and after the applies, extra_resident_bytes, restore_bit_exact, and the
mergekit workflow for one configuration (the attention-only plan) as a user would run it:
`mergekit.merge.run_merge` on the VLM's text model (a Qwen2 config over the VLM's own shards) and the
donor, the merged text spliced back with the VLM's vision tower, `from_pretrained` of that VLM. The
summary fits apply seconds against bytes moved (time = fixed + bytes / bandwidth) over every plan and
size, and gives mergekit / apply per size. Each row also holds benchmarks/switch.py's
`switch_figures` for that pair (first apply, warm switch α 0.4 ↔ 0.5 beside its single-pass lerp
limit, `switch_over_limit`, per-tensor overhead; medians of `--switch-repeats`), so the switch and
the mergekit workflow come from one run. Logs go to stderr;
ONE JSON object to stdout at the end.

Disk: per size, about 2 × the model's bf16 bytes for the pair, plus 1 × for mergekit's output:
3B ≈ 7.0 + 6.8 + 6.8 ≈ 21 GB at the peak (sizes run one after another; each folder is deleted).
Memory: the resident VLM (3B: 6.9 GB) + page cache. Time here (2 cores, shared): see README.

Run: python benchmarks/scaling.py [--sizes 0.3B,1.5B,3B,0.5B] [--no-mergekit] [--repeats 3] [--switch-repeats 7]
     [--tmp DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

import merging
from switch import SWITCH_TO, switch_figures  # run as a script: benchmarks/ is on sys.path
from toy.sharded import write_qwen_pair_sharded
from toy.tiny import DecoderShape

VOCAB = 151936
SIZES = {
    "0.3B": DecoderShape(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=3072),
    "1.5B": DecoderShape(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960),
    "3B": DecoderShape(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       intermediate_size=11008),
    "0.5B": DecoderShape(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, tie_word_embeddings=True),
}
ALPHA = 0.4


def log(msg: str) -> None:
    print(f"[scaling] {msg}", file=sys.stderr, flush=True)


def rss() -> dict[str, int]:
    """This process's resident memory in bytes: total, anonymous, file-backed, and the peak (VmHWM)."""
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "peak_rss"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = int(value.split()[0]) * 1024
    return out


def plan(components: list[str], curve: dict) -> merging.MergePlan:
    return merging.MergePlan.from_dict({"rules": [{"components": components, "method": "linear", "curve": curve}]})


def median_apply(engine, p, setup, repeats) -> tuple[float, merging.ApplyReport]:
    times, report = [], None
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        report = engine.apply(p)
        times.append(time.perf_counter() - start)
    return statistics.median(times), report


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 7) -> float:
    """Bytes read + written per second by a plain bf16 `dst.copy_(src)` (torch's own threads)."""
    src = torch.randn(nbytes // 2).to(torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def measure_engine(vlm_dir: Path, llm_dir: Path, repeats: int, switch_repeats: int) -> tuple[dict, dict]:
    """Engine figures for one pair; returns (row fields, the mergekit config of the attention plan)."""
    start = time.perf_counter()
    pair = merging.load_pair(vlm_dir, llm_dir, dtype="bfloat16", device="cpu")
    engine = merging.MergeEngine(pair)
    load_s = time.perf_counter() - start
    before = rss()
    L = pair.layout.num_layers
    attn = plan(["self_attn"], {"preset": "constant", "value": ALPHA})
    full = plan(["all"], {"preset": "constant", "value": ALPHA})
    custom = plan(["all"], {"preset": "custom", "values": [ALPHA] * L})
    one = [ALPHA] * L
    one[L // 2] = 0.7
    custom_one = plan(["all"], {"preset": "custom", "values": one})
    from merging.export.mergekit_config import mergekit_config
    kit = mergekit_config(attn, pair)

    start = time.perf_counter()
    engine.apply(full)
    first_apply_s = time.perf_counter() - start
    engine.restore()
    bandwidth = copy_bandwidth()
    apply_attention_s, attn_report = median_apply(engine, attn, engine.restore, repeats)
    apply_full_s, full_report = median_apply(engine, full, engine.restore, repeats)
    restore_s, restore_report = median_apply(engine, merging.MergePlan(), lambda: engine.apply(full), repeats)
    apply_one_layer_s, one_report = median_apply(engine, custom_one, lambda: engine.apply(custom), repeats)
    bandwidth = statistics.median([bandwidth, copy_bandwidth()])  # before and after: the machine is shared
    extra = engine.extra_resident_bytes()
    after = rss()
    to = {c: plan([c], {"preset": "constant", "value": SWITCH_TO}) for c in ("self_attn", "all")}
    switches = switch_figures(engine, {"attention": (attn, to["self_attn"]), "full": (full, to["all"])},
                              lambda: None, switch_repeats, [vlm_dir, llm_dir])
    engine.restore()
    params = dict(pair.vlm.named_parameters())
    bit_exact = all(torch.equal(params[s.name].detach(), pair.vlm_files.get(s.vlm_key)) for s in pair.layout.slots)
    reports = {"attention": attn_report, "full": full_report, "restore": restore_report, "one_layer": one_report}
    moved = {name: r.bytes_read + r.bytes_written for name, r in reports.items()}
    seconds = {"attention": apply_attention_s, "full": apply_full_s, "restore": restore_s,
               "one_layer": apply_one_layer_s}
    row = {
        "params": sum(p.numel() for p in pair.vlm.parameters()),
        "load_s": load_s, "first_apply_s": first_apply_s,
        "apply_attention_s": apply_attention_s, "apply_full_s": apply_full_s,
        "apply_one_layer_s": apply_one_layer_s, "one_layer_written": len(one_report.written), "restore_s": restore_s,
        **{f"{k}_bytes_moved": v for k, v in moved.items()},
        **{f"{k}_gbps": moved[k] / seconds[k] / 1e9 for k in moved},
        "copy_gbps": bandwidth / 1e9,
        "bandwidth_fraction_attention": moved["attention"] / apply_attention_s / bandwidth,
        "bandwidth_fraction_full": moved["full"] / apply_full_s / bandwidth,
        "rss_before": before, "rss_after": after,
        "extra_resident_bytes": extra, "restore_bit_exact": bit_exact,
        "torch_threads": torch.get_num_threads(), "write_workers": engine._pool.workers,
        **switches, "load_average": os.getloadavg(),
    }
    return row, kit


def mergekit_workflow(root: Path, vlm_dir: Path, llm_dir: Path, kit: dict) -> dict:
    """One configuration the checkpoint way: mergekit merge of the text model, splice, from_pretrained."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import save_file

    from merging.io.checkpoint import Checkpoint

    text = root / "vlm_text"  # the VLM's text model as a Qwen2 checkpoint: its own shards, a Qwen2 config
    text.mkdir()
    shutil.copy2(llm_dir / "config.json", text / "config.json")
    for f in vlm_dir.glob("*.safetensors*"):
        (text / f.name).symlink_to(f)
    config = json.loads(json.dumps(kit).replace(str(vlm_dir.resolve()), str(text.resolve())))
    merged, spliced = root / "merged", root / "spliced"
    start = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(config), str(merged),
              MergeOptions(device="cpu", copy_tokenizer=False, quiet=True, lazy_unpickle=False,
                           write_model_card=False, out_shard_size=2 * 2**30))
    merge_s = time.perf_counter() - start
    spliced.mkdir()
    for f in vlm_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(f, spliced / f.name)
    weight_map = {}
    for f in merged.glob("*.safetensors"):
        (spliced / f.name).symlink_to(f.resolve())
        weight_map.update(dict.fromkeys(Checkpoint(f).keys(), f.name))
    vlm = Checkpoint(vlm_dir)
    vision = {k: vlm.get(k).clone() for k in vlm.keys() if k not in weight_map}
    save_file(vision, str(spliced / "vision.safetensors"), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(vision, "vision.safetensors"))
    (spliced / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    splice_s = time.perf_counter() - start - merge_s
    reload_start = time.perf_counter()
    model = transformers.AutoModelForImageTextToText.from_pretrained(spliced, dtype=torch.bfloat16)
    reload_s = time.perf_counter() - reload_start
    del model, vision
    gc.collect()
    return {"mergekit_s": time.perf_counter() - start, "mergekit_merge_s": merge_s,
            "mergekit_splice_s": splice_s, "mergekit_reload_s": reload_s}


def run_size(name: str, base: Path, repeats: int, switch_repeats: int, with_mergekit: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"scaling-{name}-", dir=base))
    try:
        start = time.perf_counter()
        vlm_dir, llm_dir = write_qwen_pair_sharded(root, SIZES[name], vocab_size=VOCAB)
        build_s = time.perf_counter() - start
        disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
        log(f"{name}: built pair in {build_s:.1f}s ({disk / 1e9:.1f} GB)")
        row, kit = measure_engine(vlm_dir, llm_dir, repeats, switch_repeats)
        gc.collect()  # the engine and the resident VLM are gone before mergekit's turn
        row = {"size": name, **row, "build_s": build_s, "pair_disk_bytes": disk}
        log(f"{name}: attention {row['apply_attention_s']:.3f}s, full {row['apply_full_s']:.3f}s, "
            f"one layer {row['apply_one_layer_s']:.3f}s, restore {row['restore_s']:.3f}s")
        if with_mergekit:
            row.update(mergekit_workflow(root, vlm_dir, llm_dir, kit))
            row["mergekit_over_apply_attention"] = row["mergekit_s"] / row["apply_attention_s"]
            row["mergekit_over_apply_full"] = row["mergekit_s"] / row["apply_full_s"]
            row["mergekit_over_switch_attention"] = row["mergekit_s"] / row["switch_attention_s"]
            row["peak_disk_bytes"] = sum(f.stat().st_size for f in root.rglob("*")
                                         if f.is_file() and not f.is_symlink())
            log(f"{name}: mergekit workflow {row['mergekit_s']:.1f}s")
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summary(rows: list[dict]) -> dict:
    """Fit seconds = fixed + bytes / bandwidth over every (plan, size); per-size ratios to mergekit."""
    points = [(r[f"{k}_bytes_moved"], r[s]) for r in rows for k, s in
              (("attention", "apply_attention_s"), ("full", "apply_full_s"), ("restore", "restore_s"),
               ("one_layer", "apply_one_layer_s"))]
    out: dict = {"points": len(points)}
    if len(points) >= 2:
        mx, my = statistics.fmean(p[0] for p in points), statistics.fmean(p[1] for p in points)
        sxx = sum((x - mx) ** 2 for x, _ in points)
        slope = sum((x - mx) * (y - my) for x, y in points) / sxx
        out["fit_fixed_s"] = my - slope * mx
        out["fit_gbps"] = 1 / slope / 1e9 if slope > 0 else None
    out["per_size"] = {r["size"]: {
        "attention_gbps": r["attention_gbps"], "full_gbps": r["full_gbps"], "copy_gbps": r["copy_gbps"],
        "bandwidth_fraction_attention": r["bandwidth_fraction_attention"],
        "bandwidth_fraction_full": r["bandwidth_fraction_full"],
        **({"mergekit_over_apply_attention": r["mergekit_over_apply_attention"]} if "mergekit_s" in r else {}),
    } for r in rows}
    out["extra_resident_bytes_all_zero"] = all(r["extra_resident_bytes"] == 0 for r in rows)
    out["restore_bit_exact_all"] = all(r["restore_bit_exact"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.3B,1.5B,3B", help=f"comma-separated, of {list(SIZES)}")
    parser.add_argument("--no-mergekit", action="store_true", help="skip the mergekit workflow")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switch-repeats", type=int, default=7, help="switches (and limits) per plan")
    parser.add_argument("--tmp", default=os.environ.get("TMPDIR", tempfile.gettempdir()),
                        help="where the temporary pairs go (needs ~21 GB free for 3B with mergekit)")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    start = time.perf_counter()
    rows = []
    for name in sizes:
        rows.append(run_size(name, Path(args.tmp), args.repeats, args.switch_repeats, not args.no_mergekit))
        log(f"{name} done at {time.perf_counter() - start:.0f}s")
    print(json.dumps({"rows": rows, "summary": summary(rows), "total_s": time.perf_counter() - start}, indent=1))


if __name__ == "__main__":
    main()
