"""The engine on real tiny models: values, bit-exact restore, history independence, incrementality,
and that bad input or a failure mid-apply never leaves the weights half-merged."""

import random

import pytest
import torch
from PIL import Image

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, PlanError, load_pair
from merging.io.checkpoint import Checkpoint
from merging.errors import LayoutError
from merging.run.generate import answer
from toy.tiny import build_qwen_pair


def plan(*rules):
    return MergePlan.from_dict({"rules": list(rules)})


def rule(components, curve, method="linear", **params):
    return {"components": components, "method": method, "curve": curve, "params": params}


ALL_HALF = plan(rule(["all"], {"preset": "constant", "value": 0.5}))


def originals_and_donor(pair):
    return ({s.name: pair.vlm_files.get(s.vlm_key) for s in pair.layout.slots},
            {s.name: pair.donor.get(s.donor_key) for s in pair.layout.slots})


@pytest.mark.parametrize("dirs", ["qwen_dirs", "qwen_bf16_dirs"])
def test_linear_values_match_a_direct_fp32_computation(request, dirs):
    pair = load_pair(*request.getfixturevalue(dirs))
    engine = MergeEngine(pair)
    p = plan(rule(["self_attn"], {"preset": "linear", "start": 0.1, "end": 0.9}),
             rule(["mlp", "embed_tokens"], {"preset": "constant", "value": 0.3}))
    engine.apply(p)
    originals, donors = originals_and_donor(pair)
    params = dict(pair.vlm.named_parameters())
    L = pair.layout.num_layers
    checked = 0
    for slot in pair.layout.slots:
        if slot.group == "self_attn":
            alpha = 0.1 + 0.8 * slot.layer / (L - 1)
        elif slot.group == "mlp" or slot.role == "embed_tokens":
            alpha = 0.3
        else:  # norms, final norm, lm_head: untouched
            assert torch.equal(params[slot.name], originals[slot.name]), slot.name
            continue
        v, d = originals[slot.name].double(), donors[slot.name].double()
        expected = (v + alpha * (d - v)).to(params[slot.name].dtype)
        got = params[slot.name]
        if got.dtype == torch.float32:
            torch.testing.assert_close(got, expected, rtol=2e-7, atol=1e-8)
        else:  # fp32 arithmetic rounded once to bf16: within one bf16 ulp plus fp32 cancellation error
            bound = torch.finfo(got.dtype).eps * expected.double().abs() \
                + 4 * torch.finfo(torch.float32).eps * (v.abs() + d.abs())
            assert ((got.double() - expected.double()).abs() <= bound).all(), slot.name
            assert (got == expected).float().mean() > 0.99
        checked += 1
    assert checked > 0


def test_restore_is_bit_exact_and_answers_return(qwen_pair, qwen_engine):
    before = lm_state(qwen_pair)
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    base_answer = answer(qwen_pair, "How many shapes?", image)
    report = qwen_engine.apply(ALL_HALF)
    assert len(report.written) == len(qwen_pair.layout.slots)
    assert answer(qwen_pair, "How many shapes?", image) != base_answer
    report = qwen_engine.restore()
    assert sorted(report.restored) == sorted(before) and not report.written
    assert_same_weights(qwen_pair, before)
    assert answer(qwen_pair, "How many shapes?", image) == base_answer
    assert qwen_engine.plan == MergePlan()


def _random_plan(rng: random.Random, num_layers: int) -> MergePlan:
    components = [["self_attn"], ["mlp"], ["norms"], ["embed_tokens", "lm_head"], ["q_proj", "down_proj"], ["all"]]
    curves = [lambda: {"preset": "constant", "value": rng.choice([0.0, 0.25, 0.5, 1.0])},
              lambda: {"preset": "linear", "start": rng.random(), "end": rng.random()},
              lambda: {"preset": "step", "layer": rng.randrange(num_layers + 1), "value": rng.random()},
              lambda: {"preset": "custom", "values": [rng.random() for _ in range(num_layers)]}]
    return plan(*[rule(rng.choice(components), rng.choice(curves)()) for _ in range(rng.randrange(4))])


def test_history_independence_over_random_plan_sequences(qwen_dirs):
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair)
    rng = random.Random(1234)
    plans = [_random_plan(rng, pair.layout.num_layers) for _ in range(12)]
    reference = {}
    for p in plans:  # each plan applied fresh from the pure VLM
        engine.restore()
        engine.apply(p)
        reference[p.hash()] = lm_state(pair)
    for p in rng.sample(plans, len(plans)) + plans[::-1]:  # then in other orders, from other states
        engine.apply(p)
        assert_same_weights(pair, reference[p.hash()])


def test_incremental_apply_writes_only_changed_tensors(qwen_pair, qwen_engine):
    L = qwen_pair.layout.num_layers
    values = [0.2] * L
    first = plan(rule(["self_attn", "mlp"], {"preset": "custom", "values": values}))
    qwen_engine.apply(first)
    params = dict(qwen_pair.vlm.named_parameters())
    # tamper with a tensor the next apply has no reason to touch: if it were rewritten, we would see it
    sentinel = "model.language_model.layers.0.mlp.up_proj.weight"
    with torch.no_grad():
        params[sentinel].add_(1.0)
    changed = plan(rule(["self_attn", "mlp"], {"preset": "custom", "values": values[:2] + [0.7] + values[3:]}))
    report = qwen_engine.apply(changed)
    layer2 = {s.name for s in qwen_pair.layout.slots if s.layer == 2 and s.group in ("self_attn", "mlp")}
    assert set(report.written) == layer2 and not report.restored
    assert report.bytes_written == sum(params[n].numel() * params[n].element_size() for n in layer2)
    assert qwen_engine.apply(changed).written == []  # same plan again: nothing to do
    # tensors that leave the plan are restored, the rest stay
    narrower = plan(rule(["self_attn"], {"preset": "custom", "values": values[:2] + [0.7] + values[3:]}))
    report = qwen_engine.apply(narrower)
    assert set(report.restored) == {s.name for s in qwen_pair.layout.slots if s.group == "mlp"}
    assert not report.written
    with torch.no_grad():  # the sentinel was restored from the file, tampering gone
        assert torch.equal(params[sentinel], qwen_pair.vlm_files.get("model.layers.0.mlp.up_proj.weight"))


@pytest.mark.parametrize("bad,message", [
    (plan(rule(["mlp"], {"preset": "custom", "values": [0.1, 0.2]})), "custom curve has 2 values but the model has 4"),
    (plan(rule(["mlp"], {"preset": "step", "layer": 9, "value": 0.5})), "beyond the model's 4 layers"),
])
def test_plans_wrong_for_this_model_change_nothing(qwen_pair, qwen_engine, bad, message):
    good = plan(rule(["self_attn"], {"preset": "constant", "value": 0.3}))
    qwen_engine.apply(good)
    before = lm_state(qwen_pair)
    with pytest.raises(PlanError, match=message):
        qwen_engine.apply(bad)
    assert_same_weights(qwen_pair, before)
    assert qwen_engine.plan == good


def test_failure_mid_apply_leaves_the_previous_plan(qwen_pair, qwen_engine, failing_method):
    explode = failing_method("explode_on_third", 3, RuntimeError("simulated failure mid-apply"))
    previous = plan(rule(["mlp"], {"preset": "constant", "value": 0.6}))
    qwen_engine.apply(previous)
    expected = lm_state(qwen_pair)
    failing = plan(rule(["self_attn"], {"preset": "constant", "value": 0.3}),
                   rule(["mlp"], {"preset": "linear", "start": 0.0, "end": 1.0}, method=explode))
    with pytest.raises(RuntimeError, match="simulated failure"):
        qwen_engine.apply(failing)
    assert_same_weights(qwen_pair, expected)
    assert qwen_engine.plan == previous
    assert qwen_engine.apply(previous).written == []  # its bookkeeping agrees with the weights


def test_vocab_mismatch_merges_shared_rows_and_keeps_the_vlms_own(llava_dirs):
    pair = load_pair(*llava_dirs)
    MergeEngine(pair).apply(plan(rule(["embed_tokens", "lm_head"], {"preset": "constant", "value": 1.0})))
    params = dict(pair.vlm.named_parameters())
    for slot in pair.layout.slots:
        if slot.role in ("embed_tokens", "lm_head"):
            merged, original = params[slot.name], pair.vlm_files.get(slot.vlm_key)
            assert torch.equal(merged[:400], pair.donor.get(slot.donor_key))  # α = 1: the donor's rows
            assert torch.equal(merged[400:], original[400:])                  # image-token rows kept


def test_weights_edited_after_loading_are_kept_as_originals(qwen_pair):
    params = dict(qwen_pair.vlm.named_parameters())
    name = "model.language_model.norm.weight"
    with torch.no_grad():
        params[name].mul_(2.0)  # the resident model no longer equals its file
    edited = params[name].detach().clone()
    engine = MergeEngine(qwen_pair)
    engine.apply(ALL_HALF)
    assert engine.extra_resident_bytes() == edited.numel() * edited.element_size()
    engine.restore()
    assert torch.equal(params[name], edited)


def test_memory_accounting(qwen_pair, qwen_engine):
    qwen_engine.apply(ALL_HALF)
    assert qwen_engine.extra_resident_bytes() == 0  # originals re-read from the VLM's own files
    assert qwen_engine.donor_bytes_used() == sum(qwen_pair.donor.nbytes(s.donor_key) for s in qwen_pair.layout.slots)


def test_dare_draws_its_own_mask_for_every_tensor(qwen_dirs):
    """Methods get the tensor's decoder-relative name: same-shaped tensors of different layers (or
    q_proj and o_proj, both 64×64) no longer share DARE's mask."""
    vlm_dir, llm_dir = qwen_dirs
    pair = load_pair(vlm_dir, llm_dir, base=vlm_dir)  # the VLM as base: θ − θ_V is the donor's kept τ
    engine = MergeEngine(pair)
    engine.apply(plan(rule(["self_attn"], {"preset": "constant", "value": 1.0}, method="dare_linear", density=0.5)))
    params = dict(pair.vlm.named_parameters())
    masks = {s.rel: (params[s.name] != pair.vlm_files.get(s.vlm_key)) for s in pair.layout.slots
             if s.rel.endswith(("q_proj.weight", "o_proj.weight"))}
    assert len(masks) == 8 and all(0.4 < m.float().mean() < 0.6 for m in masks.values())
    kept = list(masks.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(kept) for b in kept[i + 1:])


def test_export_tensor_equals_what_apply_writes_and_changes_nothing(qwen_pair, qwen_engine):
    rng = random.Random(7)
    plans = [_random_plan(rng, qwen_pair.layout.num_layers) for _ in range(3)] + [ALL_HALF]
    qwen_engine.apply(plans[0])
    held = lm_state(qwen_pair)
    exported = {p.hash(): {n: qwen_engine.export_tensor(n, t) for n, t in qwen_engine.resolve(p).items()}
                for p in plans}
    assert_same_weights(qwen_pair, held)
    assert qwen_engine.plan == plans[0]
    for p in plans:
        qwen_engine.apply(p)
        params = dict(qwen_pair.vlm.named_parameters())
        for name, tensor in exported[p.hash()].items():
            assert tensor.device.type == "cpu" and torch.equal(tensor, params[name]), name
    # a tensor the plan leaves alone: the VLM's original
    slot = qwen_pair.layout.slots[0]
    assert torch.equal(qwen_engine.export_tensor(slot.name, None), qwen_pair.vlm_files.get(slot.vlm_key))


def test_set_donor_merges_with_the_new_donor_exactly(qwen_dirs, tmp_path):
    other = build_qwen_pair(tmp_path, seed=7)[1]  # same architecture, other weights
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "linear", "start": 0.2,
                                                                         "end": 0.8}}]})
    reference = MergeEngine(load_pair(qwen_dirs[0], other))
    reference.apply(plan)
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair)
    engine.apply(plan)
    engine.set_donor(Checkpoint(other))
    assert engine.plan == MergePlan()  # every merged value came from the old donor: back to the pure VLM
    engine.apply(plan)
    assert_same_weights(pair, lm_state(reference.pair))


def test_set_donor_refuses_another_architecture_and_changes_nothing(qwen_pair, llava_dirs):
    engine = MergeEngine(qwen_pair)
    plan = MergePlan.from_dict({"rules": [{"components": ["mlp"], "curve": {"preset": "constant", "value": 0.3}}]})
    engine.apply(plan)
    before, donor = lm_state(qwen_pair), qwen_pair.donor
    with pytest.raises(LayoutError):
        engine.set_donor(Checkpoint(llava_dirs[1]))
    assert engine.plan == plan and engine.pair.donor is donor
    assert_same_weights(qwen_pair, before)


# -- issue 27: the switch's fast paths (pool, group calls) write what the linear method writes --------
@pytest.mark.parametrize("path", ["pool", "group calls", "group calls, run every tensor"])
def test_fast_paths_write_the_linear_methods_values_bit_for_bit(tmp_path, monkeypatch, path):
    import merging.engine.cpu_pool as cpu_pool
    from merging.engine.fused import WriteBatch
    from merging.methods import linear
    from toy.tiny import build_llava_pair
    if path == "pool":
        monkeypatch.setattr(cpu_pool, "POOL_JOB_ELEMENTS", 300)  # tensors are cut into chunks and batched
    else:
        monkeypatch.setattr(cpu_pool, "POOL_MIN_ELEMENTS", 2**62)  # nothing goes to the pool
    if path.endswith("every tensor"):
        monkeypatch.setattr(WriteBatch, "FLUSH_BYTES", 1)  # the batch is full after each tensor
    # bf16 (linear is one torch.lerp), and 3 VLM vocabulary rows the donor lacks (kept as they are)
    pair = load_pair(*build_llava_pair(tmp_path, dtype=torch.bfloat16, vocab_extra=3))
    engine = MergeEngine(pair)
    alphas = {"self_attn": 0.37, "mlp": 1.0, "norms": 0.0, "norm": 0.0, "embed_tokens": 0.6, "lm_head": 0.61}
    p = plan(*(rule([group], {"preset": "constant", "value": a}) for group, a in alphas.items()))
    engine.apply(plan(rule(["all"], {"preset": "constant", "value": 0.2})))  # the switch starts merged
    report = engine.apply(p)
    params = dict(pair.vlm.named_parameters())
    assert len(report.written) == len(pair.layout.slots)
    mismatched = 0
    for slot in pair.layout.slots:
        vlm, donor = pair.vlm_files.get(slot.vlm_key), pair.donor.get(slot.donor_key)
        rows = slot.shared_rows or vlm.shape[0]
        expected = vlm.clone()
        linear(expected[:rows], vlm[:rows], donor[:rows], None, alphas[slot.group])
        mismatched += rows < vlm.shape[0]
        assert torch.equal(params[slot.name], expected), slot.name
    assert mismatched == 2  # embed_tokens and lm_head kept their extra rows
    engine.restore()
    assert all(torch.equal(params[s.name], pair.vlm_files.get(s.vlm_key)) for s in pair.layout.slots)


def test_an_apply_checks_each_file_once_not_once_per_tensor(qwen_bf16_dirs, file_checks):
    pair = load_pair(*qwen_bf16_dirs)
    engine = MergeEngine(pair)
    stats = file_checks
    stats["n"] = 0
    engine.apply(ALL_HALF)
    assert stats["n"] == 2  # the VLM's file and the donor's, before the first write
    engine.restore()
    assert stats["n"] == 4
    stats["n"] = 0
    engine.apply(plan(rule(["self_attn"], {"preset": "constant", "value": 0.5}, method="slerp")))
    # a method's own code ran between tensors: each file is checked again before it is read
    assert stats["n"] >= sum(s.group == "self_attn" for s in pair.layout.slots)
