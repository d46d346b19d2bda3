"""Numeric parity with mergekit (the reference merge tool), on tiny generated Qwen2 text pairs.

mergekit cannot merge a VLM with a text LLM, so a Qwen2ForCausalLM takes the VLM's role (LLM+LLM
merges run through the same engine). For each case the plan goes through our own mergekit export
(`merging.export.mergekit_config.mergekit_yaml`), mergekit merges the saved safetensors on the CPU
(`mergekit.merge.run_merge`), and its output is compared with what `MergeEngine.apply` wrote:

- task_arithmetic, ties (fp32): bit-identical — both compute the same fp32 operations in the same
  order (τ = θ − θ_B, weighted, summed or sign-elected, [normalised], ×λ, + θ_B). TIES needs
  density·n whole and distinct magnitudes, else the kept sets differ (mergekit keeps int(density·n)
  by argsort, we keep ⌈density·n⌉ plus ties at the threshold); in bf16 the magnitudes |τ| take few
  values and tie often: the differences are exactly at tied entries (checked).
- linear: mergekit computes (1−α)·θ_V + α·θ_L, we θ_V + α·(θ_L − θ_V) (in bf16 a fused lerp): fp32
  results within 4·2⁻²³·(|θ_V| + |θ_L|) (measured ≤ 1.2 of that unit); in bf16 a few elements
  (measured 0.04 %) round one bf16 step apart.
- slerp: mergekit normalises before the dot product; within 8·2⁻²³·(|θ_V| + |θ_L|) (measured 1.8).
- dare_linear: random masks (mergekit: torch's global generator, L1-norm rescale; we: seeded
  per-tensor masks, 1/density) — compared by statistics: kept fraction, rescale factor, overlap.
- tensors no rule matches: bit-identical (weights 1/0, or t = 0) for linear and slerp.

The pair has 24 layers on purpose: mergekit evaluates a per-layer gradient list at
x = (l/23)·23, which for l = 13 is not 13, so custom and linear curves are exported as one slice per
layer — and still match bit for bit.
"""

import math

import pytest
import torch
import yaml

pytest.importorskip("mergekit.merge", reason="mergekit is not installed; run .ci/install-test-extras.sh "
                                             "(pip install --no-deps mergekit==0.1.5 peft==0.21.2 immutables==0.21)")

from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import run_merge  # noqa: E402
from mergekit.options import MergeOptions  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from merging import MergeEngine, MergePlan, load_pair  # noqa: E402
from merging.io.checkpoint import Checkpoint  # noqa: E402
from merging.export.mergekit_config import mergekit_yaml  # noqa: E402
from toy.tokenizer import build_tokenizer  # noqa: E402

LAYERS = 24
EPS32 = 2.0 ** -23


def build_triple(root, dtype):
    """base, and two fine-tunes of it (independent relative noise): a (the VLM's role), b (the donor)."""
    tokenizer = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config).to(dtype)
    dirs = {"base": root / "base"}
    base.save_pretrained(dirs["base"])
    for name, seed in (("a", 1), ("b", 2)):
        model = Qwen2ForCausalLM(config).to(dtype)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p, q in zip(model.parameters(), base.parameters()):
                p.copy_(q + 0.1 * q.float().abs().mean().clamp_min(1e-3) * torch.randn(q.shape, generator=gen))
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])  # load_pair loads a causal LM with its tokenizer
    return dirs


@pytest.fixture(scope="module")
def fp32_pair(tmp_path_factory):
    dirs = build_triple(tmp_path_factory.mktemp("mk_fp32"), torch.float32)
    return load_pair(dirs["a"], dirs["b"], base=dirs["base"])


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    dirs = build_triple(tmp_path_factory.mktemp("mk_bf16"), torch.bfloat16)
    return load_pair(dirs["a"], dirs["b"], base=dirs["base"])


def both(pair, plan_dict, tmp_path):
    """(ours, mergekit's, targets): every slot's merged tensor from our engine and from mergekit."""
    plan = MergePlan.from_dict(plan_dict)
    text = mergekit_yaml(plan, pair, decimals=None)  # exact values: bit parity (the export rounds to 4 places)
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    out = tmp_path / "mergekit_out"
    run_merge(config, str(out), MergeOptions(device="cpu", copy_tokenizer=False, quiet=True, lazy_unpickle=False,
                                             write_model_card=False, random_seed=0))
    theirs = Checkpoint(out)
    engine = MergeEngine(pair)
    engine.apply(plan)
    params = dict(pair.vlm.named_parameters())
    ours = {s.name: params[s.name].detach().clone() for s in pair.layout.slots}
    engine.restore()
    return ours, {s.name: theirs.get(s.donor_key) for s in pair.layout.slots}, engine.resolve(plan), text


def inputs_of(pair, slot):
    return pair.vlm_files.get(slot.vlm_key).double(), pair.donor.get(slot.donor_key).double()


def check_within(pair, ours, theirs, targets, units):
    """Merged tensors within `units`·2⁻²³·(|θ_V| + |θ_L|) elementwise; the others bit-identical."""
    worst = 0.0
    for slot in pair.layout.slots:
        a, b = ours[slot.name], theirs[slot.name]
        if slot.name not in targets:
            assert torch.equal(a, b), f"{slot.rel}: a kept tensor differs"
            continue
        v, d = inputs_of(pair, slot)
        scale = EPS32 * (v.abs() + d.abs()).clamp_min(1e-30)
        worst = max(worst, ((a.double() - b.double()).abs() / scale).max().item())
    assert worst <= units, f"max difference {worst:.2f} units of 2⁻²³·(|θ_V|+|θ_L|), allowed {units}"
    return worst


LINEAR = {"rules": [
    {"components": ["self_attn"], "method": "linear", "curve": {"preset": "anchors", "values": [0.0, 0.3, 0.9]}},
    {"components": ["mlp"], "method": "linear", "curve": {"preset": "anchors", "values": [0.6, 0.1]}}]}
SLERP = {"rules": [
    {"components": ["self_attn"], "method": "slerp", "curve": {"preset": "linear", "start": 0.1, "end": 0.9}},
    {"components": ["mlp"], "method": "slerp", "curve": {"preset": "constant", "value": 0.5}}]}
TASK_ARITHMETIC = {"rules": [{"components": ["all"], "method": "task_arithmetic", "params": {"lambda": 1.3},
                              "curve": {"preset": "custom", "values": [round(0.1 + 0.8 * (7 * i % 24) / 24, 4)
                                                                        for i in range(LAYERS)]}}]}
TIES = {"rules": [{"components": ["all"], "method": "ties", "curve": {"preset": "constant", "value": 0.4},
                   "params": {"density": 0.25}}]}  # every tensor's size is a multiple of 4: density·n whole


def test_linear_with_anchors_and_filters(fp32_pair, tmp_path):
    ours, theirs, targets, text = both(fp32_pair, LINEAR, tmp_path)
    assert "filter: .self_attn." in text and "value: [0.0, 0.3, 0.9]" in text and "slices" not in text
    assert len(targets) == LAYERS * 10  # attention (q, k, v with biases, o: 7) + MLP (3) per layer
    check_within(fp32_pair, ours, theirs, targets, units=4)


def test_slerp(fp32_pair, tmp_path):
    ours, theirs, targets, text = both(fp32_pair, SLERP, tmp_path)
    assert "slices:" in text  # the linear ramp as exact per-layer scalars
    check_within(fp32_pair, ours, theirs, targets, units=8)


@pytest.mark.parametrize("pair_name", ["fp32_pair", "bf16_pair"])
def test_task_arithmetic_is_bit_identical(request, pair_name, tmp_path):
    pair = request.getfixturevalue(pair_name)
    ours, theirs, targets, text = both(pair, TASK_ARITHMETIC, tmp_path)
    assert "slices:" in text and len(targets) == len(pair.layout.slots)
    differing = [s.rel for s in pair.layout.slots if not torch.equal(ours[s.name], theirs[s.name])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def test_ties_is_bit_identical_in_fp32(fp32_pair, tmp_path):
    ours, theirs, targets, _ = both(fp32_pair, TIES, tmp_path)
    differing = [s.rel for s in fp32_pair.layout.slots if not torch.equal(ours[s.name], theirs[s.name])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    some = next(s for s in fp32_pair.layout.slots if s.rel == "layers.5.mlp.up_proj.weight")
    v, _ = inputs_of(fp32_pair, some)
    assert not torch.equal(ours[some.name].double(), v)  # it did merge


def _threshold_ties(pair, slot, density=0.25):
    """Entries whose |τ_V| or |τ_L| equals its tensor's k-th largest magnitude (k = density·n)."""
    base = pair.base.get(pair.base_keys[slot.name]).float()
    tied = torch.zeros(slot.shape, dtype=torch.bool)
    for x in (pair.vlm_files.get(slot.vlm_key), pair.donor.get(slot.donor_key)):
        mags = (x.float() - base).abs()
        k = int(density * mags.numel())
        threshold = mags.flatten().kthvalue(mags.numel() - k + 1).values
        tied |= mags == threshold
    return tied


def test_ties_in_bf16_differs_only_at_entries_tied_with_the_threshold(bf16_pair, tmp_path):
    ours, theirs, targets, _ = both(bf16_pair, TIES, tmp_path)
    differing, total = 0, 0
    for slot in bf16_pair.layout.slots:
        diff = ours[slot.name] != theirs[slot.name]
        total += diff.numel()
        if diff.any():
            assert _threshold_ties(bf16_pair, slot)[diff].all(), f"{slot.rel}: a difference away from the threshold"
            differing += int(diff.sum())
    assert 0 < differing < 0.02 * total  # measured: 2475 of 249 888 entries (1 %)


def test_linear_in_bf16_is_at_most_one_rounding_step_apart(bf16_pair, tmp_path):
    ours, theirs, targets, _ = both(bf16_pair, LINEAR, tmp_path)
    differing, total = 0, 0
    for slot in bf16_pair.layout.slots:
        a, b = ours[slot.name].float(), theirs[slot.name].float()
        if slot.name not in targets:
            assert torch.equal(a, b), slot.rel
            continue
        step = 2.0 ** (torch.floor(torch.log2(torch.maximum(a.abs(), b.abs()).clamp_min(1e-30))) - 7)  # one bf16 ulp
        assert ((a - b).abs() <= step).all(), slot.rel
        differing += int((a != b).sum())
        total += a.numel()
    assert differing < 0.005 * total  # measured: 96 of 222 720 (0.04 %)


def test_dare_linear_agrees_in_distribution(fp32_pair, tmp_path):
    density = 0.3
    plan = {"rules": [{"components": ["all"], "method": "dare_linear", "curve": {"preset": "constant", "value": 1.0},
                       "params": {"density": density, "seed": 11}}]}
    ours, theirs, targets, text = both(fp32_pair, plan, tmp_path)
    assert "rescale: true" in text
    kept = {"ours": 0, "mergekit": 0, "both": 0}
    n = 0
    for slot in fp32_pair.layout.slots:
        base = fp32_pair.base.get(fp32_pair.base_keys[slot.name]).double()
        tau = fp32_pair.donor.get(slot.donor_key).double() - base   # α = 1: θ − θ_B is the donor's kept τ
        mine, other = ours[slot.name].double() - base, theirs[slot.name].double() - base
        kept_mine, kept_other = mine.abs() > 1e-6 * tau.abs(), other.abs() > 1e-6 * tau.abs()
        kept["ours"] += int(kept_mine.sum())
        kept["mergekit"] += int(kept_other.sum())
        kept["both"] += int((kept_mine & kept_other).sum())
        n += tau.numel()
        # ours: kept entries scaled by exactly 1/density (up to the fp32 rounding of θ_B + τ/density);
        # mergekit: the kept entries scaled to the task vector's L1 norm
        rounding = 4 * EPS32 * (base.abs() + tau.abs() / density)
        assert ((mine - tau / density).abs() <= rounding)[kept_mine].all(), slot.rel
        assert (other.abs().sum() - tau.abs().sum()).abs() <= 4 * EPS32 * (base.abs() + tau.abs() / density).sum()
        if tau.numel() >= 4096:  # mergekit's factor ‖τ‖₁/‖m⊙τ‖₁ is 1/density up to sampling noise
            factor = (other[kept_other] / tau[kept_other]).mean().item()
            assert factor == pytest.approx(1 / density, rel=0.1), slot.rel
    sigma = math.sqrt(density * (1 - density) / n)
    for who in ("ours", "mergekit"):
        assert abs(kept[who] / n - density) < 5 * sigma, who
    # independent draws: the two masks overlap on density² of the entries
    assert abs(kept["both"] / n - density ** 2) < 5 * math.sqrt(density ** 2 * (1 - density ** 2) / n)
