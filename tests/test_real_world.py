"""Issue #13: checkpoints as people publish them — partial, quantized, odd-dtype, tied-with-a-stored-head —
and files that change under a running app. Each case is the tiny Qwen pair, edited on disk."""

import json
import math
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, load_pair
from merging.__main__ import main
from merging.io.checkpoint import Checkpoint
from merging.errors import CheckpointError, LayoutError
from merging.export.writer import export_checkpoint
from merging.run.generate import build_inputs
from merging.model.pair import _mapped_safetensors
from toy.tiny import DecoderShape, build_qwen_pair

ALL = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]})
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def edited_copy(src: Path, dst: Path, edit, config_edit=None) -> Path:
    """A copy of the model folder `src` at `dst` whose weights are `edit(state)` (and config `config_edit(config)`)."""
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights, metadata={"format": "pt"})
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def drop_layer1_attention(state):
    for key in [k for k in state if ".layers.1.self_attn." in k]:
        del state[key]


# -- 1. partial donors ---------------------------------------------------------------------------------
def test_partial_donor_is_refused_naming_the_missing_tensors(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    partial = edited_copy(llm, tmp_path / "partial", drop_layer1_attention)
    with pytest.raises(LayoutError, match=r"partial checkpoint — 7 of the VLM's 51 .*layers\.1\.self_attn\.q_proj"
                                          r"\.weight.*--allow-partial"):
        load_pair(vlm, partial)
    assert main(["export", "--vlm", str(vlm), "--llm", str(partial), "--plan", str(write_plan(tmp_path)),
                 "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def write_plan(folder: Path) -> Path:
    path = folder / "plan.yaml"
    path.write_text(ALL.to_yaml())
    return path


def test_partial_donor_opted_in_merges_the_rest_and_says_44_of_51(qwen_dirs, tmp_path, capsys):
    vlm, llm = qwen_dirs
    partial = edited_copy(llm, tmp_path / "partial", drop_layer1_attention)
    with pytest.warns(UserWarning, match="partial donor: 44 of 51"):
        pair = load_pair(vlm, partial, allow_partial=True)
    assert any(n.startswith("partial donor: 44 of 51") for n in pair.layout.notes)  # what the UI lists
    report = export_checkpoint(MergeEngine(pair), ALL, tmp_path / "out")
    assert (report["merged"], report["lm_tensors"], len(report["unmatched"])) == (44, 51, 7)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "44 of 51 language-model tensors merged" in card and "partial donor" in card
    assert main(["inspect", "--vlm", str(vlm), "--llm", str(partial), "--allow-partial", "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["coverage"] == "44 of 51" and len(inspected["unmatched"]) == 7


def test_stale_index_is_named(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    stale = tmp_path / "stale"
    shutil.copytree(llm, stale)
    state = load_file(stale / "model.safetensors")
    (stale / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {k: shard for shard, ks in halves.items() for k in ks}
    lost = "model.layers.2.mlp.up_proj.weight"
    for shard, ks in halves.items():
        save_file({k: state[k] for k in ks if k != lost}, stale / shard, metadata={"format": "pt"})
    (stale / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(LayoutError, match=r"1 of the VLM's 51 .*layers\.2\.mlp\.up_proj.*stale index"):
        load_pair(vlm, stale)


# -- 2. quantized donors, bases and VLMs -------------------------------------------------------------------
def fp8_quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(F8_E4M3 weight, float32 scale_inv) the way fine-grained FP8 releases are made: per block, scale so
    the block's max |w| maps to 448 (the largest E4M3 value)."""
    rows, cols = weight.shape
    br, bc = block
    scale_inv = torch.empty(math.ceil(rows / br), math.ceil(cols / bc))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            tile = weight[i * br:(i + 1) * br, j * bc:(j + 1) * bc].float()
            scale_inv[i, j] = tile.abs().max().clamp_min(1e-12) / 448
            q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = (tile / scale_inv[i, j]).to(torch.float8_e4m3fn)
    return q, scale_inv


def reference_dequantize(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Dequantization written independently of merging.io.quantization: one block at a time."""
    out = torch.empty(q.shape)
    br, bc = block
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            out[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = \
                q[i * br:(i + 1) * br, j * bc:(j + 1) * bc].float() * scale_inv[i, j]
    return out


def fp8_donor(llm: Path, root: Path, block: tuple[int, int]) -> tuple[Path, Path]:
    """(FP8 donor folder, a donor folder holding its reference-dequantized weights in float32)."""
    deq = {}

    def quantize(state):
        for key in [k for k in state if k.endswith(".weight") and k.split(".")[-2] in LINEARS]:
            state[key], state[key + "_scale_inv"] = fp8_quantize(state[key], block)
            deq[key] = reference_dequantize(state[key], state[key + "_scale_inv"], block)

    def config(c):
        c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": list(block)}

    fp8 = edited_copy(llm, root / "fp8", quantize, config)
    return fp8, edited_copy(llm, root / "deq", lambda state: state.update(deq))


@pytest.mark.parametrize("block", [(128, 128), (48, 40)])  # one block per tensor; partial edge blocks
def test_fp8_donor_merges_like_its_dequantized_weights(qwen_dirs, tmp_path, block):
    vlm, llm = qwen_dirs
    fp8, deq = fp8_donor(llm, tmp_path, block)
    ckpt = Checkpoint(fp8)
    key = "model.layers.0.mlp.up_proj.weight"  # [128, 64]
    assert ckpt.dtype_code(key) == "F8_E4M3" and ckpt.dtype(key) == torch.float32
    assert torch.equal(ckpt.get(key), load_file(deq / "model.safetensors")[key])
    merged, reference = MergeEngine(load_pair(vlm, fp8)), MergeEngine(load_pair(vlm, deq))
    merged.apply(ALL)
    reference.apply(ALL)
    expected = lm_state(reference.pair)
    params = dict(merged.pair.vlm.named_parameters())
    for name, value in expected.items():
        error = (params[name] - value).abs().max()
        assert error <= 0.01 * value.abs().max(), name
    q = params["model.language_model.layers.0.self_attn.q_proj.weight"]
    assert q.abs().max() < 1  # not raw FP8 codes (up to 448)


def test_inspect_reports_quantization_and_dtypes(qwen_dirs, tmp_path, capsys):
    vlm, llm = qwen_dirs
    fp8, _ = fp8_donor(llm, tmp_path, (128, 128))
    assert main(["inspect", "--vlm", str(vlm), "--llm", str(fp8), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    donor = report["checkpoints"]["donor"]
    assert donor["quantization"] == "fp8, 128×128 blocks, dequantized on read"
    assert donor["dtypes"]["F8_E4M3"] == 28 and report["checkpoints"]["vlm"]["quantization"] is None
    q0 = next(r for r in report["distances"] if r["layer"] == 0 and r["role"] == "q_proj")
    assert q0["donor_dtype"] == "F32/F8_E4M3" and 0.1 < q0["rel_l2"] < 0.5  # weight FP8, bias F32
    assert main(["inspect", "--vlm", str(vlm), "--llm", str(fp8)]) == 0
    table = capsys.readouterr().out
    assert "donor: fp8, 128×128 blocks, dequantized on read; dtypes F32×" in table and "F8_E4M3×28" in table


def test_fp8_scale_of_the_wrong_shape_is_refused(qwen_dirs, tmp_path):
    fp8, _ = fp8_donor(qwen_dirs[1], tmp_path, (128, 128))
    config = json.loads((fp8 / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [32, 32]
    (fp8 / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not match weight_block_size \[32, 32\]"):
        Checkpoint(fp8).get("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.q_proj\.weight' \(F8_E4M3 \[64, 64\]\) "
                                              r"has a \[1, 1\] block scale where weight_block_size \[32, 32\] needs \[2, 2\]"):
        load_pair(qwen_dirs[0], fp8)  # at load, before any merge


def gptq_like(state):
    """Replace layer 0's q_proj weight by GPTQ's packed int4 tensors (what a partly converted file holds)."""
    weight = state.pop("model.layers.0.self_attn.q_proj.weight")
    out_features, in_features = weight.shape
    state["model.layers.0.self_attn.q_proj.qweight"] = torch.zeros(in_features // 8, out_features, dtype=torch.int32)
    state["model.layers.0.self_attn.q_proj.qzeros"] = torch.zeros(1, out_features // 8, dtype=torch.int32)
    state["model.layers.0.self_attn.q_proj.scales"] = torch.ones(1, out_features, dtype=torch.float16)
    state["model.layers.0.self_attn.q_proj.g_idx"] = torch.zeros(in_features, dtype=torch.int32)


def bnb_like(state):
    key = "model.layers.0.mlp.up_proj.weight"
    state[key] = torch.zeros(state[key].numel() // 2, 1, dtype=torch.uint8)
    state[key + ".absmax"] = torch.ones(16)
    state[key + ".quant_state.bitsandbytes__nf4"] = torch.zeros(8, dtype=torch.uint8)


@pytest.mark.parametrize("edit, config, method", [
    (gptq_like, {"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq"),
    (gptq_like, {"quant_method": "awq", "bits": 4, "version": "gemm"}, "awq"),
    (bnb_like, {"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
    (lambda state: None, {"quant_method": "compressed-tensors"}, "compressed-tensors"),
    (gptq_like, None, "gptq/awq"),      # no config: the tensor names betray it
    (bnb_like, None, "bitsandbytes"),
])
def test_quantized_donor_is_refused_with_the_method_named(qwen_dirs, tmp_path, edit, config, method):
    vlm, llm = qwen_dirs
    donor = edited_copy(llm, tmp_path / "q", edit,
                        (lambda c: c.update(quantization_config=config)) if config else None)
    with pytest.raises(CheckpointError, match=rf"the donor is quantized \({method}, .*use the unquantized checkpoint"):
        load_pair(vlm, donor)


def test_quantized_base_and_vlm_are_refused(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    base = edited_copy(llm, tmp_path / "base", gptq_like, lambda c: c.update(quantization_config={"quant_method": "gptq"}))
    with pytest.raises(CheckpointError, match=r"the base is quantized \(gptq"):
        load_pair(vlm, llm, base)
    fp8_vlm = edited_copy(vlm, tmp_path / "vlm", lambda state: None,
                          lambda c: c.update(quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]}))
    with pytest.raises(CheckpointError, match=r"the VLM is quantized \(fp8"):
        load_pair(fp8_vlm, llm)


def test_fp8_base_is_dequantized_too(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    fp8, deq = fp8_donor(llm, tmp_path, (48, 40))
    plan = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "task_arithmetic",
                                           "curve": {"preset": "constant", "value": 0.5}}]})
    results = []
    for base in (fp8, deq):
        engine = MergeEngine(load_pair(vlm, llm, base))
        engine.apply(plan)
        results.append(lm_state(engine.pair))
    for name, value in results[1].items():
        assert (results[0][name] - value).abs().max() <= 0.01 * value.abs().max(), name


# -- 3. every safetensors dtype ----------------------------------------------------------------------------
def raw_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A file with tensors of any dtype code: name → (code, shape, nbytes), data all zero bytes."""
    header, offset = {}, 0
    for name, (code, shape, nbytes) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_every_dtype_of_the_format_opens_and_unreadable_ones_are_named(tmp_path):
    codes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
             "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
             "C64": 8, "F64": 8, "I64": 8, "U64": 8}
    tensors = {f"t.{code}": (code, [2, 4], 8 * size) for code, size in codes.items()}
    tensors.update({"t.F4": ("F4", [2, 4], 4), "t.F6_E2M3": ("F6_E2M3", [4, 4], 12), "t.F6_E3M2": ("F6_E3M2", [4], 3)})
    raw_safetensors(tmp_path / "all.safetensors", tensors)
    ckpt = Checkpoint(tmp_path / "all.safetensors")
    assert sorted(ckpt.dtype_counts()) == sorted(list(codes) + ["F4", "F6_E2M3", "F6_E3M2"])
    assert ckpt.get("t.U16").dtype == torch.uint16 and ckpt.get("t.F8_E8M0").shape == (2, 4)
    with pytest.raises(CheckpointError, match=r"F4 \[2, 4\] cannot be read"):
        ckpt.get("t.F4")
    assert ckpt.float_problem("t.U16") == "tensor 't.U16' is U16, not a float dtype Mergescope can merge"
    assert ckpt.float_problem("t.BF16") is None
    raw_safetensors(tmp_path / "odd.safetensors", {"t": ("F4", [3], 2)})  # 12 bits: not whole bytes
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Checkpoint(tmp_path / "odd.safetensors")


def test_unused_u16_tensor_is_ignored(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    donor = edited_copy(llm, tmp_path / "u16", lambda s: s.update({"extra.step_counter": torch.arange(4).to(torch.uint16)}))
    engine = MergeEngine(load_pair(vlm, donor))
    engine.apply(ALL)
    reference = MergeEngine(load_pair(vlm, llm))
    reference.apply(ALL)
    assert_same_weights(engine.pair, lm_state(reference.pair))


def test_merged_tensor_of_an_unusable_dtype_is_refused_by_name(qwen_dirs, tmp_path):
    vlm, llm = qwen_dirs
    key = "model.layers.0.mlp.up_proj.weight"
    donor = edited_copy(llm, tmp_path / "i32", lambda s: s.update({key: s[key].to(torch.int32)}))
    with pytest.raises(CheckpointError, match=rf"'{key}' is I32, not a float dtype .*layers\.0\.mlp\.up_proj\.weight"):
        load_pair(vlm, donor)


# -- 4. a tied VLM whose file also stores lm_head.weight ---------------------------------------------------
@pytest.fixture(scope="module")
def tied_dirs(tmp_path_factory):
    return build_qwen_pair(tmp_path_factory.mktemp("tied"), DecoderShape(tie_word_embeddings=True), seed=3)


@pytest.mark.parametrize("stored_head", ["equal", "different"])  # transformers ties the first, unties the second
def test_tied_vlm_with_a_stored_head_exports_what_it_merged(tied_dirs, tmp_path, stored_head):
    vlm, llm = tied_dirs

    def add_head(state):
        embed = state["model.embed_tokens.weight"]
        state["lm_head.weight"] = embed.clone() if stored_head == "equal" else embed + 0.05 * torch.randn_like(embed)

    vlm = edited_copy(vlm, tmp_path / "vlm", add_head)
    pair = load_pair(vlm, llm)
    engine = MergeEngine(pair)
    engine.apply(ALL)
    inputs = build_inputs(pair, "How many shapes?", None)
    with torch.no_grad():
        expected = pair.vlm(**inputs).logits
    export_checkpoint(engine, ALL, tmp_path / "out")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert (reloaded(**inputs).logits - expected).abs().max() <= 1e-5


# -- 5. files that change under a running app -----------------------------------------------------------
def test_resident_weights_do_not_read_from_the_vlm_file(qwen_pair):
    ranges = _mapped_safetensors()
    assert ranges  # our own Checkpoint maps remain
    inside = [n for n, p in qwen_pair.vlm.named_parameters() if any(a <= p.data_ptr() < b for a, b in ranges)]
    assert not inside


TRUNCATION_SCRIPT = textwrap.dedent("""
    import os, shutil, sys, torch
    from merging import MergeEngine, MergePlan, load_pair
    from merging.errors import CheckpointError
    from merging.run.generate import build_inputs
    vlm, llm, base = sys.argv[1:4]
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.4}}]})
    other = MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "task_arithmetic",
                                            "curve": {"preset": "constant", "value": 0.7}}]})
    engine = MergeEngine(load_pair(vlm, llm, base))
    engine.apply(plan)
    params = dict(engine.pair.vlm.named_parameters())
    state = {n: p.detach().clone() for n, p in params.items()}
    inputs = build_inputs(engine.pair, "How many?", None)
    for role, folder in (("donor", llm), ("base", base), ("vlm", vlm)):
        path = os.path.join(folder, "model.safetensors")
        saved = open(path, "rb").read()
        os.truncate(path, len(saved) // 2)
        try:
            engine.apply(other)
            print(role, "NOT REFUSED")
        except CheckpointError as exc:
            print(role, "refused:", exc)
        assert engine.plan == plan and all(torch.equal(params[n], t) for n, t in state.items())
        with torch.no_grad():
            engine.pair.vlm(**inputs)  # generation reads only resident weights
        if role == "vlm":  # restored as a new file (new inode), the others in place
            shutil.copyfile(path, path + ".tmp")
            open(path + ".tmp", "wb").write(saved)
            os.replace(path + ".tmp", path)
        else:
            open(path, "wb").write(saved)
        engine.apply(other)
        engine.apply(plan)
        print(role, "restored ok")

    # truncated mid-apply, after the check before the first write: each read checks again, the engine
    # cannot go back to `plan` (it needs the donor) and falls back to the pure VLM, a known plan
    from merging.methods import linear, merge_method
    donor_path = os.path.join(llm, "model.safetensors")
    saved, calls = open(donor_path, "rb").read(), {"n": 0}

    def truncating(out, vlm, donor, base, alpha):
        calls["n"] += 1
        if calls["n"] == 3:
            os.truncate(donor_path, len(saved) // 2)
        linear(out, vlm, donor, base, alpha)

    merge_method("truncating", formula="linear; truncates the donor file on its third tensor")(truncating)
    pure = MergeEngine(load_pair(vlm, llm, base)).pair.vlm.named_parameters()
    pure = {n: p.detach().clone() for n, p in pure}
    try:
        engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"], "method": "truncating",
                                                     "curve": {"preset": "constant", "value": 0.9}}]}))
        print("mid-apply NOT REFUSED")
    except CheckpointError as exc:
        print("mid-apply refused:", exc)
    assert engine.plan == MergePlan() and all(torch.equal(params[n], t) for n, t in pure.items())
    open(donor_path, "wb").write(saved)
    engine.apply(plan)
    print("mid-apply restored ok")
""")


def test_truncated_files_give_a_clear_error_and_restored_files_work(qwen_dirs, tmp_path):
    vlm = tmp_path / "vlm"
    shutil.copytree(qwen_dirs[0], vlm)
    llm = tmp_path / "llm"
    shutil.copytree(qwen_dirs[1], llm)
    base = tmp_path / "base"
    shutil.copytree(qwen_dirs[1], base)
    result = subprocess.run([sys.executable, "-c", TRUNCATION_SCRIPT, str(vlm), str(llm), str(base)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]  # a signal (SIGBUS) would be negative
    lines = result.stdout.splitlines()
    for role in ("donor", "base", "vlm", "mid-apply"):
        assert any(line.startswith(f"{role} refused:") and "changed on disk since it was opened" in line
                   for line in lines), result.stdout
        assert f"{role} restored ok" in lines
