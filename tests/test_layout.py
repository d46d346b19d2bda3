"""Mapping VLM parameters to donor tensors across model families (tiny models built here)."""

import pytest
import torch
from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

from merging.io.checkpoint import Checkpoint
from merging.errors import LayoutError
from merging.model.layout import build_layout, classify
from merging.model.pair import load_pair
from toy.tiny import save_donor

TEXT = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def _layout_of(vlm_dir, llm_dir):
    pair = load_pair(vlm_dir, llm_dir)
    return pair, pair.layout


def _expected_names(model):
    """Every decoder parameter plus an untied head: the tensors a full merge must cover."""
    decoder = model.get_decoder()
    ids = {id(p) for p in decoder.parameters()}
    head = model.get_output_embeddings().weight
    return sum(1 for _ in decoder.parameters()) + (id(head) not in ids)


def _check_complete(pair, layout, num_layers):
    assert layout.num_layers == num_layers
    assert not layout.unmatched and not layout.mismatched
    assert len(layout.slots) == _expected_names(pair.vlm)
    names = dict(pair.vlm.named_parameters())
    for slot in layout.slots:  # each slot's donor and original tensors agree with the live parameter
        assert pair.donor.shape(slot.donor_key)[1:] == tuple(names[slot.name].shape)[1:]
        assert torch.equal(pair.vlm_files.get(slot.vlm_key), names[slot.name])
    roles = {s.role for s in layout.slots}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
            "input_layernorm", "post_attention_layernorm", "embed_tokens", "norm"} <= roles
    assert all(s.layer is None for s in layout.slots if s.role in ("embed_tokens", "norm", "lm_head"))
    assert sorted({s.layer for s in layout.slots if s.layer is not None}) == list(range(num_layers))


def test_qwen25_vl_maps_completely(qwen_dirs):
    pair, layout = _layout_of(*qwen_dirs)
    _check_complete(pair, layout, 4)
    q = next(s for s in layout.slots if s.rel == "layers.2.self_attn.q_proj.bias")
    assert q.name == "model.language_model.layers.2.self_attn.q_proj.bias"
    assert q.donor_key == q.vlm_key == "model.layers.2.self_attn.q_proj.bias"  # hub layout on disk
    head = next(s for s in layout.slots if s.role == "lm_head")
    assert head.name == head.donor_key == "lm_head.weight"


def test_llava_maps_completely_and_reports_vocab_mismatch(llava_dirs):
    pair, layout = _layout_of(*llava_dirs)
    _check_complete(pair, layout, 4)
    up = next(s for s in layout.slots if s.rel == "layers.1.mlp.up_proj.weight")
    assert up.vlm_key == "language_model.model.layers.1.mlp.up_proj.weight"
    assert up.donor_key == "model.layers.1.mlp.up_proj.weight"
    embed = next(s for s in layout.slots if s.role == "embed_tokens")
    head = next(s for s in layout.slots if s.role == "lm_head")
    assert embed.shared_rows == head.shared_rows == 400 and embed.shape[0] == 403
    assert head.vlm_key == "language_model.lm_head.weight"
    assert any("vocab sizes differ (VLM 403, donor 400)" in n for n in layout.notes)


def test_idefics3_text_model_maps_completely(tmp_path):
    config = Idefics3Config(text_config=LlamaConfig(**TEXT),
                            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=28, patch_size=14),
                            scale_factor=2, image_token_id=5)
    torch.manual_seed(0)
    vlm = Idefics3ForConditionalGeneration(config).eval()
    vlm.save_pretrained(tmp_path / "vlm")
    save_donor(vlm, LlamaForCausalLM(LlamaConfig(**TEXT)), tmp_path / "llm")
    layout = build_layout(vlm, Checkpoint(tmp_path / "vlm"), Checkpoint(tmp_path / "llm"))
    assert layout.num_layers == 3 and not layout.unmatched and not layout.mismatched
    assert len(layout.slots) == _expected_names(vlm)
    norm = next(s for s in layout.slots if s.role == "norm")
    assert norm.name == "model.text_model.norm.weight" and norm.donor_key == "model.norm.weight"


@pytest.mark.parametrize("tied", [False, True])
def test_plain_causal_lm_in_the_vlm_role(tmp_path, tied):
    torch.manual_seed(0)
    config = Qwen2Config(**TEXT, tie_word_embeddings=tied)
    vlm = Qwen2ForCausalLM(config).eval()
    vlm.save_pretrained(tmp_path / "vlm")
    save_donor(vlm, Qwen2ForCausalLM(config), tmp_path / "llm")
    layout = build_layout(vlm, Checkpoint(tmp_path / "vlm"), Checkpoint(tmp_path / "llm"))
    assert not layout.unmatched and not layout.mismatched
    assert len(layout.slots) == _expected_names(vlm)
    assert any(s.role == "lm_head" for s in layout.slots) is (not tied)  # tied: the head is the embedding


def test_untied_vlm_takes_its_head_from_a_tied_donors_embedding(tmp_path):
    torch.manual_seed(0)
    vlm = Qwen2ForCausalLM(Qwen2Config(**TEXT, tie_word_embeddings=False)).eval()
    vlm.save_pretrained(tmp_path / "vlm")
    save_donor(vlm, Qwen2ForCausalLM(Qwen2Config(**TEXT, tie_word_embeddings=True)), tmp_path / "llm")
    layout = build_layout(vlm, Checkpoint(tmp_path / "vlm"), Checkpoint(tmp_path / "llm"))
    head = next(s for s in layout.slots if s.role == "lm_head")
    assert head.donor_key == "model.embed_tokens.weight"


def test_shape_mismatch_refuses_naming_tensors(tmp_path, qwen_dirs):
    vlm_dir, _ = qwen_dirs
    pair = load_pair(*qwen_dirs)
    wider = Qwen2Config(**dict({k: getattr(pair.vlm.config.text_config, k) for k in
                                ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                 "num_key_value_heads")}, intermediate_size=96))
    Qwen2ForCausalLM(wider).save_pretrained(tmp_path / "wider")
    with pytest.raises(LayoutError, match=r"shapes differ .*mlp\.(gate|up|down)_proj\.weight: VLM \[\d+, \d+\] vs donor"):
        load_pair(vlm_dir, tmp_path / "wider")


def test_unrelated_donor_is_refused(tmp_path, qwen_dirs):
    from safetensors.torch import save_file
    save_file({"encoder.block.0.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(LayoutError, match="found none of the VLM's decoder tensors"):
        load_pair(qwen_dirs[0], tmp_path)


@pytest.mark.parametrize("rel,expected", [
    ("layers.3.self_attn.q_proj.bias", ("q_proj", "self_attn", 3)),
    ("layers.0.mlp.down_proj.weight", ("down_proj", "mlp", 0)),
    ("layers.11.post_attention_layernorm.weight", ("post_attention_layernorm", "norms", 11)),
    ("layers.2.self_attn.q_norm.weight", ("q_norm", "self_attn", 2)),
    ("embed_tokens.weight", ("embed_tokens", "embed_tokens", None)),
    ("norm.weight", ("norm", "norm", None)),
    ("lm_head.weight", ("lm_head", "lm_head", None)),
])
def test_classify(rel, expected):
    assert classify(rel) == expected


def test_qwen_checkpoint_saved_with_in_memory_names(tmp_path, qwen_dirs):
    """Some Qwen2.5-VL checkpoints store `model.language_model.*`; the mapping must not care."""
    import shutil

    from safetensors.torch import save_file
    vlm_dir, llm_dir = qwen_dirs
    shutil.copytree(vlm_dir, tmp_path / "vlm")
    model = load_pair(vlm_dir, llm_dir).vlm
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "vlm" / "model.safetensors")
    pair, layout = _layout_of(tmp_path / "vlm", llm_dir)
    _check_complete(pair, layout, 4)
    assert all(s.vlm_key.startswith("model.language_model.") for s in layout.slots if s.role != "lm_head")
    assert all(s.donor_key.startswith("model.layers.") for s in layout.slots if s.layer is not None)


def test_base_model_is_mapped_too(qwen_dirs):
    vlm_dir, llm_dir = qwen_dirs
    pair = load_pair(vlm_dir, llm_dir, base=vlm_dir)
    assert set(pair.base_keys) == {s.name for s in pair.layout.slots}
    assert pair.fingerprints()["base"] == pair.fingerprints()["vlm"] != pair.fingerprints()["donor"]


def test_base_missing_tensors_is_refused_at_load(tmp_path, qwen_dirs):
    from safetensors.torch import load_file, save_file
    vlm_dir, llm_dir = qwen_dirs
    weights = load_file(llm_dir / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(LayoutError, match=r"base model lacks .*layers\.1\.mlp\.up_proj\.weight"):
        load_pair(vlm_dir, llm_dir, base=tmp_path)
