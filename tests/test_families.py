"""Every family end to end on tiny random models built here with their real processors (issue #24):
inspect, apply, answers with and without an image (batched = one at a time), the next-token
distribution, export → from_pretrained → the same weights and answers.

Llama 3.2 Vision (Mllama) interleaves cross-attention layers with the self-attention layers of the
Llama it was built from: VLM layer i pairs with donor layer `layer_map[i]`, the cross-attention
layers never merge, and nothing blames the donor for them."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from merging import MergeEngine, MergePlan, load_pair
from merging.__main__ import main
from merging.errors import LayoutError
from merging.export.mergekit_config import mergekit_config
from merging.methods import regmean_solve
from merging.methods.mergekit import MergekitUnsupported
from merging.run.collect_grams import run_grams
from merging.stats.gram_files import GramFile
from merging.export.writer import export_checkpoint
from merging.run.generate import GenerationSettings, answer, answer_batch
from merging.run.probe import next_token_distribution
from test_real_world import drop_layer1_attention, edited_copy
from toy import families
from toy.families import build_mllama_pair
from toy.tiny import build_llava_pair, build_qwen_pair

CROSS = (1, 3)  # VLM layers 0, 2, 4 are self-attention: donor layers 0, 1, 2
LINEAR = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "linear", "start": 0.2,
                                                                        "end": 0.8}}]})


@pytest.fixture(scope="module")
def mllama_dirs(tmp_path_factory):
    return build_mllama_pair(tmp_path_factory.mktemp("mllama"), cross_attention_layers=CROSS)


@pytest.fixture(scope="module")
def mllama_engine(mllama_dirs):
    return MergeEngine(load_pair(*mllama_dirs))


def test_mllama_layers_map_around_the_cross_attention_layers(mllama_engine):
    layout = mllama_engine.pair.layout
    assert layout.layer_map == {0: 0, 2: 1, 4: 2} and layout.num_layers == 3 and layout.interleaved == list(CROSS)
    assert not layout.unmatched and not layout.mismatched  # a complete donor is complete
    decoder = mllama_engine.pair.vlm.get_decoder()
    cross = {f"model.language_model.layers.{i}.{k}" for i in CROSS for k, _ in decoder.layers[i].named_parameters()}
    assert set(layout.vlm_only) == cross and not cross & {s.name for s in layout.slots}
    assert {s.layer for s in layout.slots if s.layer is not None} == {0, 1, 2}
    q4 = next(s for s in layout.slots if s.name == "model.language_model.layers.4.self_attn.q_proj.weight")
    assert (q4.layer, q4.donor_key) == (2, "model.layers.2.self_attn.q_proj.weight")
    assert any("VLM-only and never merge" in n and "(1, 3)" in n for n in layout.notes)


def test_mllama_merges_mapped_layers_exactly_and_keeps_cross_attention(mllama_dirs, mllama_engine):
    vlm_dir, llm_dir = mllama_dirs
    stored, donor_file = load_file(vlm_dir / "model.safetensors"), load_file(llm_dir / "model.safetensors")
    # Mllama saves its hub layout: language_model.model.layers.N... for model.language_model.layers.N...
    vlm_file = {"model.language_model." + k.removeprefix("language_model.model."): v for k, v in stored.items()}
    mllama_engine.apply(LINEAR)
    try:
        params = dict(mllama_engine.pair.vlm.named_parameters())
        alphas = {0: 0.2, 1: 0.5, 2: 0.8}  # the linear curve over the 3 mapped layers
        for vlm_index, mapped in {0: 0, 2: 1, 4: 2}.items():
            prefix = f"model.language_model.layers.{vlm_index}."
            names = [n for n in params if n.startswith(prefix)]
            assert len(names) == 9
            for name in names:
                v = vlm_file[name]
                d = donor_file[f"model.layers.{mapped}." + name[len(prefix):]]
                expected = (1 - alphas[mapped]) * v + alphas[mapped] * d
                assert torch.allclose(params[name], expected, atol=1e-6, rtol=0), name
        for i in CROSS:
            prefix = f"model.language_model.layers.{i}."
            cross = [n for n in params if n.startswith(prefix)]
            assert cross and all(torch.equal(params[n], vlm_file[n]) for n in cross)
        rows = donor_file["model.embed_tokens.weight"].shape[0]
        embed = params["model.language_model.embed_tokens.weight"]
        assert embed.shape[0] == rows + 8  # Mllama's extra rows (the image token): the donor has none
        assert torch.equal(embed[rows:], vlm_file["model.language_model.embed_tokens.weight"][rows:])
        assert not torch.equal(embed[:rows], vlm_file["model.language_model.embed_tokens.weight"][:rows])
    finally:
        mllama_engine.apply(MergePlan())


def test_mllama_partial_donor_names_only_mapped_tensors(mllama_dirs, tmp_path, capsys):
    vlm_dir, llm_dir = mllama_dirs
    partial = edited_copy(llm_dir, tmp_path / "partial", drop_layer1_attention)  # donor layer 1 = VLM layer 2
    with pytest.raises(LayoutError, match=r"partial checkpoint — 4 of the VLM's 30 language-model tensors .*"
                                          r"model\.language_model\.layers\.2\.self_attn\.q_proj\.weight") as info:
        load_pair(vlm_dir, partial)
    assert "cross_attn" not in str(info.value) and "layers.1." not in str(info.value)
    assert main(["inspect", "--vlm", str(vlm_dir), "--llm", str(llm_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["coverage"] == "30 of 30" and report["vlm_only_layers"] == list(CROSS)
    assert len(report["vlm_only"]) == 26 and {r["layer"] for r in report["distances"]} == {None, 0, 1, 2}


def test_mllama_regmean_reads_the_donor_gram_of_the_mapped_layer(mllama_dirs, tmp_path):
    vlm_dir, llm_dir = mllama_dirs
    Image.new("RGB", (56, 56), "red").save(tmp_path / "red.png")
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"id": str(i), "question": q, "answer": "1", "answer_type": "integer", "image": "red.png"}) + "\n"
        for i, q in enumerate(["How many shapes?"])))
    files = {role: tmp_path / f"{role}.safetensors" for role in ("vlm", "donor")}
    run_grams(vlm_dir, tmp_path / "eval.jsonl", files["vlm"])
    run_grams(llm_dir, tmp_path / "eval.jsonl", files["donor"])
    engine = MergeEngine(load_pair(vlm_dir, llm_dir), grams={k: str(v) for k, v in files.items()})
    engine.apply(MergePlan.from_dict({"rules": [{"components": ["self_attn"], "method": "regmean",
                                                 "curve": {"preset": "constant", "value": 0.5},
                                                 "params": {"gamma": 1.0}}]}))
    pair = engine.pair
    slot = next(s for s in pair.layout.slots if s.name == "model.language_model.layers.4.self_attn.q_proj.weight")
    v, d = pair.vlm_files.get(slot.vlm_key), pair.donor.get(slot.donor_key)
    grams = [GramFile(files["vlm"]).get("layers.4.self_attn.q_proj"), GramFile(files["donor"]).get("layers.2.self_attn.q_proj")]
    want = regmean_solve([v, d], grams, [0.5, 0.5], 1.0)
    assert torch.equal(dict(pair.vlm.named_parameters())[slot.name], want.to(v.dtype))
    with pytest.raises(MergekitUnsupported, match=r"layers 1, 3 have no counterpart in the donor"):
        mergekit_config(LINEAR, pair)



# -- every family: the same checks ---------------------------------------------------------------
BUILDERS = {"qwen2.5-vl": build_qwen_pair, "llava": build_llava_pair, "qwen3-vl": families.build_qwen3_vl_pair,
            "gemma3": families.build_gemma3_pair, "mistral3": families.build_mistral3_pair,
            "llava-onevision": families.build_llava_onevision_pair, "internvl": families.build_internvl_pair,
            "mllama": build_mllama_pair, "idefics3": families.build_idefics3_pair}
HALF = MergePlan.from_dict({"rules": [{"components": ["all"], "curve": {"preset": "constant", "value": 0.5}}]})
SHORT = GenerationSettings(max_new_tokens=3)
QUESTIONS = [("What is in the image?", Image.new("RGB", (40, 30), (200, 30, 30))), ("How many?", None),
             ("Describe the picture.", Image.new("RGB", (30, 44), (20, 160, 90)))]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request, tmp_path_factory):
    """(name, vlm_dir, llm_dir, engine merged with HALF) for each family."""
    vlm_dir, llm_dir = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    engine = MergeEngine(load_pair(vlm_dir, llm_dir))
    engine.apply(HALF)
    return request.param, vlm_dir, llm_dir, engine


def test_family_maps_completely_and_merges_exactly(family):
    name, vlm_dir, _, engine = family
    pair = engine.pair
    layout = pair.layout
    if name == "mistral3":  # the hub repos' native-format copy beside the weights is not read
        assert (vlm_dir / "consolidated.safetensors").is_file()
        assert all(s.vlm_key.startswith("language_model.") for s in layout.slots)
    assert not layout.unmatched and not layout.mismatched, name
    decoder = pair.vlm.get_decoder()
    untied = pair.vlm.get_output_embeddings().weight is not decoder.get_input_embeddings().weight
    assert len(layout.slots) + len(layout.vlm_only) == sum(1 for _ in decoder.parameters()) + untied
    params = dict(pair.vlm.named_parameters())
    for slot in layout.slots:  # (1−α)·V + α·L on the shared rows; the VLM's own rows untouched
        v, d = pair.vlm_files.get(slot.vlm_key), pair.donor.get(slot.donor_key)
        rows = slot.shared_rows or v.shape[0]
        assert torch.allclose(params[slot.name][:rows], 0.5 * v[:rows] + 0.5 * d[:rows], atol=1e-6, rtol=0), slot.name
        assert torch.equal(params[slot.name][rows:], v[rows:]), slot.name
    if name in ("qwen3-vl", "gemma3"):
        assert {"q_norm", "k_norm"} <= set(layout.roles())
    if name == "gemma3":
        assert "lm_head" not in layout.roles() and {"pre_feedforward_layernorm", "post_feedforward_layernorm"} <= set(layout.roles())
    if name == "qwen3-vl":
        assert any(n.startswith("DeepStack: vision features are added to the hidden states of decoder layers 0–1")
                   for n in layout.notes)


def test_family_answers_batched_like_one_at_a_time(family):
    _, _, _, engine = family
    pair = engine.pair
    alone = [answer(pair, q, image, SHORT) for q, image in QUESTIONS]
    assert answer_batch(pair, QUESTIONS, SHORT) == alone
    top = next_token_distribution(pair, *QUESTIONS[0], top_k=5)
    probabilities = [p for _, p in top]
    assert len(top) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6


def test_family_export_reloads_to_the_same_weights_and_answers(family, tmp_path):
    name, _, llm_dir, engine = family
    export_checkpoint(engine, HALF, tmp_path / "out")
    reloaded = load_pair(tmp_path / "out", llm_dir)  # the exported folder as a VLM: weights, config, processor
    merged, fresh = dict(engine.pair.vlm.named_parameters()), dict(reloaded.vlm.named_parameters())
    differing = [n for n, p in merged.items() if not torch.equal(fresh[n], p)]
    assert not differing, f"{name}: {differing[:3]}"
    question, image = QUESTIONS[0]
    assert answer(reloaded, question, image, SHORT) == answer(engine.pair, question, image, SHORT)
