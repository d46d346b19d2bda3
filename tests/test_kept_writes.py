"""Issue 27: a switch queues its element-wise writes from per-parameter records kept between applies
(merging/engine/kept.py). They write what the general path writes, bit for bit, check each file once
per apply, follow a file that is mapped afresh, and never hold a converted copy."""

import os
import shutil

import pytest
import torch

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, load_pair
from merging.engine.merge_engine import MergeEngine as Engine


def constant(**alphas) -> MergePlan:
    """A plan of one constant-α rule per group, e.g. constant(self_attn=0.4, mlp=("slerp", 0.3))."""
    rules = []
    for group, value in alphas.items():
        method, alpha = value if isinstance(value, tuple) else ("linear", value)
        rules.append({"components": [group], "method": method, "curve": {"preset": "constant", "value": alpha}})
    return MergePlan.from_dict({"rules": rules})


SWITCH = [constant(self_attn=0.4, mlp=0.3, embed_tokens=1.0), constant(self_attn=0.5, mlp=0.7, embed_tokens=0.0),
          constant(self_attn=("slerp", 0.5), mlp=0.6), constant(self_attn=0.4, mlp=0.3, embed_tokens=1.0)]


@pytest.fixture
def general_calls(monkeypatch):
    """How many tensors went through the general path (`MergeEngine._compute`)."""
    calls = {"n": 0}
    real = Engine._compute

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Engine, "_compute", counted)
    return calls


def test_switches_through_kept_records_write_the_general_paths_values(qwen_bf16_dirs, general_calls):
    pair = load_pair(*qwen_bf16_dirs)
    engine = MergeEngine(pair)
    original, groups = lm_state(pair), {s.name: s.group for s in pair.layout.slots}
    engine.apply(SWITCH[0])
    engine.apply(SWITCH[1])
    for p in SWITCH:
        fresh_pair = load_pair(*qwen_bf16_dirs)
        MergeEngine(fresh_pair).apply(p)  # a fresh engine: every tensor through the general path
        general_calls["n"] = 0
        report = engine.apply(p)
        assert_same_weights(pair, lm_state(fresh_pair))
        slerped = sum(groups[n] == "self_attn" for n in report.written) if p is SWITCH[2] else 0
        assert general_calls["n"] == slerped  # only slerp's tensors took the general path
    general_calls["n"] = 0
    engine.restore()
    assert general_calls["n"] == 0
    assert_same_weights(pair, original)  # bit-exact restore


def test_a_switch_checks_each_file_once(qwen_bf16_dirs, file_checks):
    pair = load_pair(*qwen_bf16_dirs)
    engine = MergeEngine(pair)
    engine.apply(SWITCH[0])
    checks = file_checks
    checks["n"] = 0
    engine.apply(SWITCH[1])
    assert checks["n"] == 2  # the VLM's file and the donor's, once each
    engine.apply(SWITCH[0])
    assert checks["n"] == 4


def test_kept_records_follow_a_file_mapped_afresh(qwen_bf16_dirs, tmp_path):
    vlm, llm = (shutil.copytree(d, tmp_path / d.name) for d in qwen_bf16_dirs)
    pair = load_pair(vlm, llm)
    engine = MergeEngine(pair)
    engine.apply(SWITCH[0])
    engine.apply(SWITCH[1])
    donor_file = next(llm.glob("*.safetensors"))
    shutil.copy2(donor_file, tmp_path / "copy.safetensors")
    os.replace(tmp_path / "copy.safetensors", donor_file)  # the same checkpoint, a new file
    report = engine.apply(SWITCH[0])
    kept = engine._kept._by_slot
    assert set(kept) == set(report.written)
    for slot in pair.layout.slots:  # the records read the new mapping, not the replaced file's
        if slot.name in kept:
            assert kept[slot.name].donor.data_ptr() == pair.donor.get(slot.donor_key).data_ptr()
    fresh = load_pair(*qwen_bf16_dirs)
    MergeEngine(fresh).apply(SWITCH[0])
    assert_same_weights(pair, lm_state(fresh))


def test_converted_inputs_are_not_kept(qwen_dirs):
    pair = load_pair(*qwen_dirs, dtype="bfloat16")  # fp32 files: each original is a converted copy
    engine = MergeEngine(pair)
    engine.apply(SWITCH[0])
    engine.apply(SWITCH[1])
    assert len(engine._kept) == 0 and engine.extra_resident_bytes() == 0
    engine.restore()
    params = dict(pair.vlm.named_parameters())
    assert all(torch.equal(params[s.name], pair.vlm_files.get(s.vlm_key).to(torch.bfloat16)) for s in pair.layout.slots)
