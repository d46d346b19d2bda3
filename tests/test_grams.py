"""RegMean statistics end to end: Gram matrices from forward hooks (checked against activations
captured independently), the file format and its fingerprint check, the engine's lazy use of them,
RegMean as the least-squares merge of real layer inputs, and every bad input refused before a write."""

import json
import math

import pytest
import torch
from PIL import Image

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, MergescopeError, PlanError, load_pair
from merging.plan import curves
from merging.__main__ import main
from merging.io.checkpoint import write_safetensors
from merging.run.generate import build_inputs
from merging.run.collect_grams import GramAccumulator, run_grams
from merging.stats.gram_files import GramFile
from merging.methods import linear, regmean_solve

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (240, 200, 0), (20, 20, 20), (200, 200, 200)]
QUESTIONS = ["How many shapes are there?", "What colour is the square?", "Is there a circle?",
             "Count the triangles.", "Describe the picture.", "What is in the image? Answer in one word."]


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    lines = []
    for i, (colour, question) in enumerate(zip(COLOURS, QUESTIONS)):
        Image.new("RGB", (56, 56), colour).save(root / f"img{i}.png")
        lines.append(json.dumps({"id": str(i), "question": question, "answer": "1", "answer_type": "integer",
                                 "image": f"img{i}.png"}))
    (root / "eval.jsonl").write_text("\n".join(lines) + "\n")
    return root / "eval.jsonl"


@pytest.fixture(scope="module")
def gram_files(qwen_dirs, eval_set, tmp_path_factory):
    """{vlm, donor, donor_attention}: Gram files of the tiny Qwen pair, computed once."""
    vlm_dir, llm_dir = qwen_dirs
    root = tmp_path_factory.mktemp("grams")
    files = {"vlm": root / "vlm.safetensors", "donor": root / "donor.safetensors",
             "donor_attention": root / "donor_attn.safetensors"}
    reports = {"vlm": run_grams(vlm_dir, eval_set, files["vlm"]),
               "donor": run_grams(llm_dir, eval_set, files["donor"]),
               "donor_attention": run_grams(llm_dir, eval_set, files["donor_attention"], scope="attention")}
    return files, reports


def capture_inputs(model, module, owner, items, with_images):
    """The inputs `module` receives over the eval items, captured with a hook of our own."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1]).double()))
    with torch.no_grad():
        for colour, question in items:
            model(**build_inputs(owner, question, Image.new("RGB", (56, 56), colour) if with_images else None))
    handle.remove()
    return torch.cat(seen)


# -- the accumulator ---------------------------------------------------------------------------------
class Toy(torch.nn.Module):
    """q, k read the same tensor (shared Gram); o reads another; the head is untied."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Module()])
        attn = self.layers[0].self_attn = torch.nn.Module()
        attn.q_proj, attn.k_proj, attn.o_proj = (torch.nn.Linear(5, 5), torch.nn.Linear(5, 3), torch.nn.Linear(3, 5))
        self.lm_head = torch.nn.Linear(5, 7, bias=False)
        self.embed = torch.nn.Embedding(7, 5)

    def get_decoder(self):
        return self

    def get_output_embeddings(self):
        return self.lm_head

    def get_input_embeddings(self):
        return self.embed

    def forward(self, x):
        attn = self.layers[0].self_attn
        h = attn.q_proj(x) + attn.o_proj(attn.k_proj(x))
        return self.lm_head(torch.relu(h))


def test_accumulator_sums_x_transpose_x_per_input_and_shares_identical_inputs():
    torch.manual_seed(0)
    model = Toy()
    acc = GramAccumulator(model, "all")
    xs = [torch.randn(2, 3, 5), torch.randn(1, 4, 5)]
    with torch.no_grad():
        for x in xs:
            model(x)
            acc.end_sample()
    acc.remove()
    grams = acc.grams()
    assert acc.aliases == {"layers.0.self_attn.k_proj": "layers.0.self_attn.q_proj"}
    assert set(grams) == {"layers.0.self_attn.q_proj", "layers.0.self_attn.o_proj", "lm_head"}
    flat = torch.cat([x.reshape(-1, 5) for x in xs]).double()  # 10 positions
    torch.testing.assert_close(grams["layers.0.self_attn.q_proj"].double(), flat.T @ flat / 10)
    with torch.no_grad():
        attn = model.layers[0].self_attn
        k = torch.cat([attn.k_proj(x).reshape(-1, 3) for x in xs]).double()
        h = torch.cat([torch.relu(attn.q_proj(x) + attn.o_proj(attn.k_proj(x))).reshape(-1, 5) for x in xs]).double()
    torch.testing.assert_close(grams["layers.0.self_attn.o_proj"].double(), k.T @ k / 10)
    torch.testing.assert_close(grams["lm_head"].double(), h.T @ h / 10)
    # attention only: the head is left out
    assert GramAccumulator(model, "attention").names == ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj",
                                                         "layers.0.self_attn.o_proj"]


# -- on the tiny Qwen pair ------------------------------------------------------------------------------
def test_gram_files_hold_the_models_own_statistics(qwen_pair, qwen_dirs, gram_files):
    files, reports = gram_files
    vlm_grams = GramFile(files["vlm"], qwen_pair.vlm_files.fingerprint())
    donor_grams = GramFile(files["donor"], qwen_pair.donor.fingerprint())
    assert reports["vlm"]["samples"] == reports["donor"]["samples"] == 6
    assert reports["vlm"]["tokens"] > reports["donor"]["tokens"]  # the VLM also reads image tokens
    L = qwen_pair.layout.num_layers
    for grams in (vlm_grams, donor_grams):
        # q/k/v and gate/up share their input: 4 stored per layer (q, o, gate, down) + the head
        assert len(grams.stored()) == 4 * L + 1
        assert grams.aliases["layers.2.self_attn.v_proj"] == "layers.2.self_attn.q_proj"
        assert grams.aliases["layers.2.mlp.up_proj"] == "layers.2.mlp.gate_proj"
        assert grams.shape("layers.1.mlp.down_proj") == (128, 128) and grams.shape("lm_head") == (64, 64)
    attention = GramFile(files["donor_attention"])
    assert attention.scope == "attention" and "layers.0.self_attn.o_proj" in attention
    assert "layers.0.mlp.gate_proj" not in attention and "lm_head" not in attention
    assert reports["donor_attention"]["bytes"] < reports["donor"]["bytes"] / 2

    # independent check: q_proj reads input_layernorm's output — captured here by our own hook
    items = list(zip(COLOURS, QUESTIONS))
    vlm_layer = qwen_pair.vlm.get_decoder().layers[1]
    x = capture_inputs(qwen_pair.vlm, vlm_layer.self_attn.q_proj, qwen_pair, items, with_images=True)
    torch.testing.assert_close(vlm_grams.get("layers.1.self_attn.k_proj").double(), x.T @ x / x.shape[0],
                               rtol=1e-5, atol=1e-6)
    donor = load_pair(qwen_dirs[1], qwen_dirs[1])  # the donor, instantiated here to check its statistics
    x = capture_inputs(donor.vlm, donor.vlm.get_decoder().layers[1].self_attn.q_proj, donor, items, with_images=False)
    torch.testing.assert_close(donor_grams.get("layers.1.self_attn.q_proj").double(), x.T @ x / x.shape[0],
                               rtol=1e-5, atol=1e-6)


def regmean_plan(components=("self_attn",), gamma=1.0, curve=None):
    return MergePlan.from_dict({"rules": [{"components": list(components), "method": "regmean",
                                           "curve": curve or {"preset": "linear", "start": 0.3, "end": 0.7},
                                           "params": {"gamma": gamma}}]})


def test_regmean_in_the_engine_is_the_least_squares_merge_of_the_real_layer_inputs(qwen_dirs, gram_files):
    files, _ = gram_files
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair, grams={"vlm": files["vlm"], "donor": files["donor"]})
    engine.apply(regmean_plan(("self_attn", "norms"), gamma=1.0))
    params = dict(pair.vlm.named_parameters())
    items = list(zip(COLOURS, QUESTIONS))
    donor = load_pair(qwen_dirs[1], qwen_dirs[1])
    layer = 2
    alphas = curves.layer_alphas({"preset": "linear", "start": 0.3, "end": 0.7}, 4)
    alpha = alphas[layer]
    # argmin_W (1−α)·‖X_V Wᵀ − X_V W_Vᵀ‖²/N_V + α·‖X_L Wᵀ − X_L W_Lᵀ‖²/N_L over the captured inputs
    pair_for_capture = load_pair(*qwen_dirs)  # pristine weights (the engine's model is merged)
    x_v = capture_inputs(pair_for_capture.vlm, pair_for_capture.vlm.get_decoder().layers[layer].self_attn.q_proj,
                         pair_for_capture, items, with_images=True)
    x_l = capture_inputs(donor.vlm, donor.vlm.get_decoder().layers[layer].self_attn.q_proj, donor, items,
                         with_images=False)
    slot = next(s for s in pair.layout.slots if s.rel == f"layers.{layer}.self_attn.q_proj.weight")
    w_v, w_l = pair.vlm_files.get(slot.vlm_key).double(), pair.donor.get(slot.donor_key).double()
    scale = [math.sqrt((1 - alpha) / x_v.shape[0]), math.sqrt(alpha / x_l.shape[0])]
    a = torch.cat([scale[0] * x_v, scale[1] * x_l])
    y = torch.cat([scale[0] * x_v @ w_v.T, scale[1] * x_l @ w_l.T])
    expected = torch.linalg.lstsq(a, y).solution.T
    got = params[slot.name].double()
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4
    assert ((got - (w_v + alpha * (w_l - w_v))).norm() / expected.norm()).item() > 1e-2  # not just linear
    # every linear weight is regmean_solve of the stored Grams; biases and norms are merged linearly
    vlm_g, donor_g = GramFile(files["vlm"]), GramFile(files["donor"])
    for s in pair.layout.slots:
        if s.group not in ("self_attn", "norms"):
            assert torch.equal(params[s.name], pair.vlm_files.get(s.vlm_key)), s.name
            continue
        v, d, alpha_s = pair.vlm_files.get(s.vlm_key), pair.donor.get(s.donor_key), alphas[s.layer]
        if s.rel.endswith(".weight") and s.group == "self_attn":
            module = s.rel[:-len(".weight")]
            want = regmean_solve([v, d], [vlm_g.get(module), donor_g.get(module)], [1 - alpha_s, alpha_s], 1.0)
            assert torch.equal(params[s.name], want.to(v.dtype)), s.name
        else:
            want = torch.empty_like(v)
            linear(want, v, d, None, alpha_s)
            assert torch.equal(params[s.name], want), s.name
    engine.restore()


def test_attaching_other_grams_rewrites_exactly_the_regmean_tensors(qwen_dirs, gram_files):
    files, _ = gram_files
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair, grams={"vlm": files["vlm"], "donor": files["donor"]})
    plan = MergePlan.from_dict({"rules": [
        {"components": ["self_attn"], "method": "regmean", "curve": {"preset": "constant", "value": 0.5}},
        {"components": ["mlp"], "method": "linear", "curve": {"preset": "constant", "value": 0.5}}]})
    engine.apply(plan)
    assert engine.apply(plan).written == []
    report = engine.set_grams(files["vlm"], files["donor_attention"])  # other statistics for the donor
    regmean_weights = {s.name for s in pair.layout.slots if s.group == "self_attn" and s.rel.endswith(".weight")}
    assert set(report.written) == regmean_weights
    assert engine.plan == plan and engine.gram_fingerprints()["donor"] == GramFile(files["donor_attention"]).fingerprint()
    # and back: the same weights as at first (history independence)
    first = lm_state(pair)
    engine.set_grams(files["vlm"], files["donor"])
    engine.set_grams(files["vlm"], files["donor_attention"])
    assert_same_weights(pair, first)


# -- bad inputs: clear errors, the engine as it was -----------------------------------------------------
@pytest.fixture
def merged_engine(qwen_dirs, gram_files):
    files, _ = gram_files
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair, grams={"vlm": files["vlm"], "donor": files["donor_attention"]})
    good = regmean_plan()
    engine.apply(good)
    return engine, good, lm_state(pair)


def assert_unchanged(engine, plan, state):
    assert engine.plan == plan
    assert_same_weights(engine.pair, state)
    assert engine.apply(plan).written == []


def test_a_gram_file_of_another_model_is_refused(merged_engine, gram_files):
    engine, good, state = merged_engine
    files, _ = gram_files
    before = engine.gram_fingerprints()
    with pytest.raises(MergescopeError, match="belong to another model.*fingerprint"):
        engine.set_grams(files["donor"], files["donor"])  # the donor's statistics given for the VLM
    with pytest.raises(MergescopeError, match="belong to another model"):
        MergeEngine(engine.pair, grams={"vlm": files["vlm"], "donor": files["vlm"]})
    assert engine.gram_fingerprints() == before
    assert_unchanged(engine, good, state)


def test_files_that_are_not_gram_files_are_refused(merged_engine, tmp_path, qwen_dirs):
    engine, good, state = merged_engine
    with pytest.raises(MergescopeError, match="not a Mergescope Gram file"):
        engine.set_grams(qwen_dirs[0] / "model.safetensors", None)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not safetensors at all")
    with pytest.raises(MergescopeError, match="VLM Gram file"):
        engine.set_grams(bogus, None)
    wrong_shape = tmp_path / "wrong.safetensors"
    meta = engine.gram_files()["vlm"].metadata
    write_safetensors(wrong_shape, [("layers.0.self_attn.q_proj", torch.float32, (3, 3))],
                      lambda name: torch.eye(3), dict(meta, aliases="{}"))
    with pytest.raises(PlanError, match="takes 64 inputs"):
        engine.set_grams(wrong_shape, None)
    assert_unchanged(engine, good, state)


def test_plans_the_grams_cannot_serve_change_nothing(merged_engine, qwen_dirs):
    engine, good, state = merged_engine
    with pytest.raises(PlanError, match=r"no Gram for 13 linear layer\(s\).*layers.0.mlp.gate_proj.*--modules all"):
        engine.apply(regmean_plan(("all",)))  # the donor's file has attention Grams only
    with pytest.raises(PlanError, match="gamma=1.5 is outside"):
        regmean_plan(gamma=1.5)
    with pytest.raises(PlanError, match="needs Gram statistics of both models; not attached: donor"):
        # detaching would break the current plan
        engine.set_grams(engine.gram_files()["vlm"].path, None)
    assert_unchanged(engine, good, state)
    # no Grams at all: refused before the first write, naming the command to run
    pair = load_pair(*qwen_dirs)
    bare = MergeEngine(pair)
    before = lm_state(pair)
    with pytest.raises(PlanError, match="not attached: vlm and donor. Compute them with `python -m merging grams"):
        bare.apply(regmean_plan())
    assert_same_weights(pair, before)
    # a regmean rule on tensors that are no linear layer's weight needs no Grams (linear fallback)
    bare.apply(regmean_plan(("norms",)))


def test_grams_command(qwen_dirs, eval_set, tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    assert main(["grams", "--model", str(qwen_dirs[1]), "--data", str(eval_set), "--out", str(out),
                 "--modules", "attention", "--max-samples", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and report["modules"] == "attention" and out.is_file()
    assert GramFile(out).metadata["fingerprint"] == report["fingerprint"]
    assert main(["grams", "--model", str(qwen_dirs[1]), "--data", str(tmp_path / "missing.jsonl"),
                 "--out", str(out)]) == 2
    assert "no such eval file" in capsys.readouterr().err


def test_answer_command_attaches_grams_for_regmean(qwen_dirs, gram_files, tmp_path, capsys):
    files, _ = gram_files
    plan = tmp_path / "regmean.yaml"
    plan.write_text(MergePlan.from_dict({"rules": [{"components": ["self_attn"], "method": "regmean",
                                                    "curve": {"preset": "constant", "value": 0.5}}]}).to_yaml())
    models = ["--vlm", str(qwen_dirs[0]), "--llm", str(qwen_dirs[1])]
    ask = ["answer", *models, "--plan", str(plan), "--question", "How many?", "--max-new-tokens", "4", "--json"]
    assert main(ask) == 2
    assert "needs Gram statistics" in capsys.readouterr().err
    assert main([*ask, "--grams-vlm", str(files["vlm"])]) == 2
    assert "give both --grams-vlm and --grams-donor" in capsys.readouterr().err
    assert main([*ask, "--grams-vlm", str(files["vlm"]), "--grams-donor", str(files["donor"])]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["answer"], str)


def test_a_donor_keeps_its_grams_across_a_donor_switch(qwen_dirs, gram_files, tmp_path):
    from merging.io.checkpoint import Checkpoint
    from toy.tiny import build_qwen_pair
    files, _ = gram_files
    pair = load_pair(*qwen_dirs)
    engine = MergeEngine(pair, grams={"vlm": files["vlm"], "donor": files["donor"]})
    own, other = pair.donor, Checkpoint(build_qwen_pair(tmp_path, seed=7)[1])
    engine.set_donor(other)
    assert set(engine.gram_files()) == {"vlm"}  # the donor's statistics belong to the donor that left
    engine.set_donor(own)
    assert engine.gram_files()["donor"].path == files["donor"]


def test_the_app_refuses_one_gram_file_before_loading_anything(tmp_path):
    from app import main as app_main
    with pytest.raises(SystemExit, match="give both --grams-vlm and --grams-donor"):
        app_main(["--grams-vlm", str(tmp_path / "vlm.safetensors"), "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "cache").exists()  # refused before the cache (or a model) was opened
