"""Every registered method works everywhere a method can be named: in plans (validated with its
parameters), with per-layer α curves on two components (the engine hands each tensor its own α), in
sweep grids, and in exports (checkpoint, plus mergekit.yaml where mergekit can express the plan)."""

import json

import pytest
import torch
import yaml

from merging import MergeEngine, MergePlan, PlanError, load_pair
from merging.export.writer import export_checkpoint
from merging.export.mergekit_config import MERGEKIT_METHODS, MERGEKIT, MergekitUnsupported, mergekit_yaml
from merging.methods import REGISTRY, get_method
from merging.experiments.sweep import parse_grid
from test_mergekit_parity import build_triple

CURVE = {"preset": "loglinear", "start": 0.05, "end": 0.9}
NON_DEFAULT = {"density": 0.6, "lambda": 1.1, "gamma": 0.02, "epsilon": 0.1, "seed": 3, "select_topk": 0.5,
               "t": 1e-3}
EXPORTABLE = [m for m in REGISTRY if m in MERGEKIT_METHODS and MERGEKIT[m].weights != "none"]


def params_for(method):
    """Non-default values for the method's float parameters where we have one, defaults elsewhere."""
    out = {}
    for p in REGISTRY[method].params:
        if p.name in NON_DEFAULT and p.kind is float and p.low <= NON_DEFAULT[p.name] <= p.high:
            out[p.name] = NON_DEFAULT[p.name]
    if method in ("ram", "ramplus_tl"):
        out["epsilon"] = 1e-3
    return out


def rule(method, components=("self_attn", "mlp"), curve=CURVE):
    return {"components": list(components), "method": method, "curve": curve, "params": params_for(method)}


@pytest.fixture(scope="module")
def triple(tmp_path_factory):
    dirs = build_triple(tmp_path_factory.mktemp("every"), torch.float32)
    return dirs, load_pair(dirs["a"], dirs["b"], base=dirs["base"])


def test_every_mergekit_method_is_registered():
    import mergekit.merge_methods.registry as mk
    theirs = {m.spec.name for m in mk.registered_methods()} - {"passthrough"}  # α = 0/1 and `step` give it
    assert theirs == set(MERGEKIT_METHODS) and theirs <= set(REGISTRY)


@pytest.mark.parametrize("method", [m for m in REGISTRY if m != "regmean"])
def test_method_in_plans_curves_sweeps_and_exports(triple, tmp_path, method):
    dirs, pair = triple
    plan = MergePlan.from_dict({"rules": [rule(method)]})
    assert MergePlan.from_text(plan.canonical_json()) == plan  # parameters survive the plan's text
    with pytest.raises(PlanError, match="has no parameter"):
        MergePlan.from_dict({"rules": [{**rule(method), "params": {"no_such": 1}}]})
    # per-tensor α from a loglinear curve on two components: each merged tensor is the method at its α
    engine = MergeEngine(pair)
    engine.apply(plan)
    targets = engine.resolve(plan)
    assert {t.method for t in targets.values()} == {method} and len({t.alpha for t in targets.values()}) > 3
    params = dict(pair.vlm.named_parameters())
    fn = get_method(method)
    for slot in pair.layout.slots:
        original = pair.vlm_files.get(slot.vlm_key)
        if slot.name not in targets:
            assert torch.equal(params[slot.name].detach(), original), slot.rel
            continue
        target = targets[slot.name]
        expect = torch.empty_like(original)
        base = pair.base.get(pair.base_keys[slot.name]) if fn.needs_base else None
        context = {"name": slot.rel} if "name" in fn.context else {}
        fn.fn(expect, original, pair.donor.get(slot.donor_key), base, target.alpha, **dict(target.params), **context)
        assert torch.equal(params[slot.name].detach(), expect), slot.rel
    # export: the checkpoint, and mergekit.yaml exactly where mergekit can express the plan
    report = export_checkpoint(engine, plan, tmp_path / "out", max_shard_bytes="400KB")
    assert report is not None
    written = (tmp_path / "out" / "mergekit.yaml").exists()
    assert written == (method in EXPORTABLE), method
    if not written:
        with pytest.raises(MergekitUnsupported, match="per-model weights|no "):
            mergekit_yaml(plan, pair)
    engine.restore()
    # sweeps: a grid naming the method with its parameters
    grid = {"components": {"S": ["self_attn", "mlp"]}, "curves": {"M": {"preset": "loglinear", "start": 0.0}},
            "alphas": [0.3, 0.8], "merge_method": method, "params": params_for(method)}
    cells, _ = parse_grid(yaml.safe_dump(grid))
    assert [c.plan.rules[0].method for c in cells[1:]] == [method, method]
    assert dict(cells[1].plan.rules[0].params) == dict(plan.rules[0].params)


@pytest.mark.parametrize("method", [m for m in REGISTRY if m in MERGEKIT_METHODS and MERGEKIT[m].weights == "none"])
def test_weightless_methods_export_at_alpha_one(triple, method):
    dirs, pair = triple
    plan = MergePlan.from_dict({"rules": [rule(method, ("all",), {"preset": "constant", "value": 1.0})]})
    text = mergekit_yaml(plan, pair)
    assert f"merge_method: {method}" in text and "weight" not in yaml.safe_load(text)["models"][0]


def test_della_refuses_density_and_epsilon_outside_the_unit_interval():
    with pytest.raises(PlanError, match="density ± epsilon"):
        MergePlan.from_dict({"rules": [{"components": ["all"], "method": "della",
                                        "curve": {"preset": "constant", "value": 0.5},
                                        "params": {"density": 0.9, "epsilon": 0.15}}]})
    MergePlan.from_dict({"rules": [{"components": ["all"], "method": "della",  # density 1: no sampling, no check
                                    "curve": {"preset": "constant", "value": 0.5},
                                    "params": {"density": 1.0, "epsilon": 0.15}}]})


def test_ramplus_tl_writes_rho_max_under_mergekits_name(triple):
    dirs, pair = triple
    plan = MergePlan.from_dict({"rules": [{"components": ["all"], "method": "ramplus_tl",
                                           "curve": {"preset": "constant", "value": 1.0},
                                           "params": {"rho_max": 0.3}}]})
    config = yaml.safe_load(mergekit_yaml(plan, pair))
    assert config["parameters"]["alpha"] == 0.3 and "rho_max" not in json.dumps(config)


def _inputs(dtype):
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(37, 53, generator=gen)
    vlm, donor = (base + 0.1 * torch.randn(37, 53, generator=gen) for _ in range(2))
    return [t.to(dtype) for t in (vlm, donor, base)]


def _call(method, vlm, donor, base, alpha):
    m = REGISTRY[method]
    before = [t.clone() for t in (vlm, donor, base)]
    out = torch.full_like(vlm, float("nan"))
    m.fn(out, vlm, donor, base if m.needs_base else None, alpha, **params_for(method),
         **({"name": "layers.0.mlp.up_proj.weight"} if "name" in m.context else {}))
    assert all(torch.equal(t, b) for t, b in zip((vlm, donor, base), before)), f"{method} modified its inputs"
    assert torch.isfinite(out).all(), method
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", [m for m in REGISTRY if m != "regmean"])
def test_pure_and_independent_of_the_chunk_size(monkeypatch, method, dtype):
    """Same inputs, same bits, whatever the chunk size (257 elements cuts rows of 53 anywhere); the
    inputs are left alone. Random methods draw their masks chunk by chunk, so only a fixed chunk size
    gives fixed masks: for them the check is that repeated calls agree."""
    from merging.methods import registry
    inputs = _inputs(dtype)
    first = _call(method, *inputs, 0.35)
    assert torch.equal(first, _call(method, *inputs, 0.35))
    if "seed" not in {p.name for p in REGISTRY[method].params}:
        monkeypatch.setattr(registry, "CHUNK_ELEMENTS", 257)
        assert torch.equal(first, _call(method, *inputs, 0.35)), method


@pytest.mark.parametrize("method", [m for m in REGISTRY if m in MERGEKIT and MERGEKIT[m].base != "common"
                                    or m in MERGEKIT and MERGEKIT[m].weights == "none"])
def test_alpha_zero_keeps_the_vlm_exactly(method):
    """Where α is a blend from the VLM (weightless methods) or a model weight without a base, α = 0
    is the VLM bit for bit."""
    vlm, donor, base = _inputs(torch.bfloat16)
    assert torch.equal(_call(method, vlm, donor, base, 0.0), vlm)
