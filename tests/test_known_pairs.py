"""Every named pair's tensor layout, checked on the meta device from hand-written configs (no download),
and the memory estimate that runs before a load."""

import re

import pytest
import torch
from transformers import (AutoConfig, Gemma3Config, Gemma3TextConfig, Idefics3Config, InternVLConfig, LlamaConfig, LlavaConfig,
                          LlavaOnevisionConfig, MistralConfig, Mistral3Config, MllamaConfig, Qwen2_5_VLConfig,
                          Qwen2Config, Qwen2VLConfig, Qwen3Config, Qwen3VLConfig)

from merging.errors import MergescopeError
from merging.model.known_pairs import KNOWN_PAIRS, TOY_VLM, known_pair
from merging.model.pair import check_fits, meta_model, weight_bytes
from merging.model.layout import build_layout


def qwen_text(vocab, hidden, inter, layers, heads, kv, tied):
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied)


QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                     fullatt_block_indexes=[7, 15, 23, 31])


def qwen25(text):
    return (Qwen2_5_VLConfig(text_config=text, vision_config=dict(QWEN25_VISION, out_hidden_size=text["hidden_size"]),
                             tie_word_embeddings=text["tie_word_embeddings"]),
            Qwen2Config(**text))


LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32)
SMOL = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
            num_key_value_heads=32)
QWEN3_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)
GEMMA3_27B = dict(vocab_size=262208, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                  num_attention_heads=32, num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168,
                  sliding_window=1024)
MISTRAL_SMALL = dict(vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_hidden_layers=40,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128)
NEMO = dict(vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128)
PIXTRAL_VISION = dict(model_type="pixtral", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, image_size=1540, patch_size=14)
QWEN25_7B = qwen_text(152064, 3584, 18944, 28, 28, 4, False)
QWEN2_7B = qwen_text(152064, 3584, 18944, 28, 28, 4, False)
SIGLIP_400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                   num_attention_heads=16, image_size=384, patch_size=14)
LLAMA31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 8192})
MLLAMA_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_global_layers=8,
                     attention_heads=16, image_size=560, patch_size=14, max_num_tiles=4, vision_output_dim=7680)
# (VLM config, donor config, layers, shared vocabulary rows or None) — the published models' dimensions
CONFIGS = {
    "qwen3-vl-8b": (Qwen3VLConfig(text_config=dict(QWEN3_8B, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                                               "mrope_section": [24, 20, 20],
                                                                               "mrope_interleaved": True}),
                                  vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                                                     out_hidden_size=4096, patch_size=16,
                                                     deepstack_visual_indexes=[8, 16, 24]),
                                  tie_word_embeddings=False),
                    Qwen3Config(**QWEN3_8B), 36, None),
    "gemma-3-27b": (Gemma3Config(text_config=GEMMA3_27B,
                                 vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                    num_attention_heads=16, image_size=896, patch_size=14)),
                    Gemma3TextConfig(**GEMMA3_27B), 62, None),
    "mistral-small-3.1": (Mistral3Config(text_config=dict(MISTRAL_SMALL, model_type="mistral", rope_theta=1e9),
                                         vision_config=PIXTRAL_VISION),
                          MistralConfig(**MISTRAL_SMALL, rope_theta=1e8), 40, None),
    "pixtral-12b": (LlavaConfig(text_config=dict(NEMO, model_type="mistral", rope_theta=1e9),
                                vision_config=dict(PIXTRAL_VISION, image_size=1024, patch_size=16)),
                    MistralConfig(**NEMO, rope_theta=1e6), 40, None),
    "internvl3-8b": (InternVLConfig(text_config=dict(QWEN25_7B, model_type="qwen2", vocab_size=151674),
                                    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                       num_attention_heads=16, image_size=[448, 448],
                                                       patch_size=[14, 14])),
                     Qwen2Config(**QWEN25_7B), 28, 151674),
    "llava-onevision-7b": (LlavaOnevisionConfig(text_config=dict(QWEN2_7B, model_type="qwen2", vocab_size=152128),
                                                vision_config=SIGLIP_400M),
                           Qwen2Config(**QWEN2_7B), 28, 152064),
    "llama-3.2-11b-vision": (MllamaConfig(text_config=dict(LLAMA31_8B, num_hidden_layers=40,
                                                           cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38]),
                                          vision_config=MLLAMA_VISION),
                             LlamaConfig(**LLAMA31_8B, num_hidden_layers=32), 32, 128256),
    "qwen2.5-vl-7b": (*qwen25(qwen_text(152064, 3584, 18944, 28, 28, 4, False)), 28, None),
    "qwen2.5-vl-3b": (*qwen25(qwen_text(151936, 2048, 11008, 36, 16, 2, True)), 36, None),
    "qwen2.5-vl-72b": (*qwen25(qwen_text(152064, 8192, 29568, 80, 64, 8, False)), 80, None),
    "qwen2-vl-2b": (Qwen2VLConfig(text_config=qwen_text(151936, 1536, 8960, 28, 12, 2, True),
                                  vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16),
                                  tie_word_embeddings=True),
                    Qwen2Config(**qwen_text(151936, 1536, 8960, 28, 12, 2, True)), 28, None),
    "smolvlm": (Idefics3Config(text_config=LlamaConfig(vocab_size=49155, tie_word_embeddings=False, **SMOL),
                               vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                  num_attention_heads=16, image_size=384, patch_size=14),
                               scale_factor=3, tie_word_embeddings=False),
                LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **SMOL), 24, 49152),
    "llava-1.5-7b": (LlavaConfig(text_config=LlamaConfig(vocab_size=32064, **LLAMA_7B),
                                 vision_config=dict(model_type="clip_vision_model", hidden_size=1024,
                                                    intermediate_size=4096, num_hidden_layers=24,
                                                    num_attention_heads=16, image_size=336, patch_size=14,
                                                    projection_dim=768)),
                     LlamaConfig(vocab_size=32000, **LLAMA_7B), 32, 32000),
}


class MetaWeights:
    """The names and shapes a checkpoint of `model` holds — what the layout reads from files. Like
    save_pretrained, a tied tensor is stored once, under its first name."""

    def __init__(self, model: torch.nn.Module, name: str):
        seen, self.path, self._shapes = set(), name, {}
        for key, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                self._shapes[key] = tuple(tensor.shape)

    def keys(self):
        return list(self._shapes)

    def __contains__(self, key):
        return key in self._shapes

    def shape(self, key):
        return self._shapes[key]


HUB_PAIRS = sorted(name for name in KNOWN_PAIRS if not name.startswith("toy"))  # the toy pairs load for real


def test_every_hub_pair_has_configs():
    assert set(CONFIGS) == set(HUB_PAIRS)


@pytest.mark.parametrize("name", HUB_PAIRS)
def test_known_pair_layout_on_meta(name):
    vlm_config, llm_config, layers, shared_rows = CONFIGS[name]
    vlm, llm = meta_model(vlm_config), meta_model(llm_config)
    layout = build_layout(vlm, MetaWeights(vlm, name), MetaWeights(llm, known_pair(name).llm))
    layout.require_compatible()
    assert layout.num_layers == layers and not layout.unmatched
    decoder_params = sum(1 for _ in vlm.get_decoder().parameters())
    untied_head = vlm.get_output_embeddings().weight is not vlm.get_input_embeddings().weight
    assert len(layout.slots) + len(layout.vlm_only) == decoder_params + untied_head
    extra = getattr(vlm_config.get_text_config(), "cross_attention_layers", None) or []
    assert layout.interleaved == extra and len(layout.layer_map) == layers  # Mllama: 40 VLM layers, 32 mapped
    assert all(".cross_attn" not in s.name and "_gate" not in s.name for s in layout.slots)
    embed = next(s for s in layout.slots if s.role == "embed_tokens")
    assert embed.shared_rows == shared_rows
    if untied_head:
        head = next(s for s in layout.slots if s.role == "lm_head")
        donor_tied = llm_config.tie_word_embeddings
        assert head.donor_key == ("model.embed_tokens.weight" if donor_tied else "lm_head.weight")


def test_memory_estimate_and_refusal():
    config = CONFIGS["qwen2.5-vl-7b"][0]
    bf16 = weight_bytes(config, torch.bfloat16)
    assert 8.0e9 < bf16 / 2 < 8.5e9  # Qwen2.5-VL-7B has 8.29 B parameters
    assert "needs about 17.8 GiB on cuda; 80.0 GiB free" in check_fits(config, torch.bfloat16, "cuda", free=80 * 2**30)
    with pytest.raises(MergescopeError, match="needs about 17.8 GiB on cpu; 16.0 GiB free — it does not fit"):
        check_fits(config, torch.bfloat16, "cpu", free=16 * 2**30)
    toy = AutoConfig.from_pretrained(TOY_VLM)  # a few MiB: said in MiB, never "needs about 0.0 GiB"
    assert re.search(r"needs about [1-9][0-9.]* MiB on cpu; 1.0 GiB free", check_fits(toy, torch.float32, "cpu",
                                                                                        free=2**30))
    with pytest.raises(MergescopeError, match="unknown pair 'gpt-4'"):
        known_pair("gpt-4")


def test_models_resolve_to_the_toy_pair_unless_named():
    from merging.model.known_pairs import resolve_models
    from toy import TOY_EVAL, TOY_LLM, TOY_LLM_NOSEED, TOY_SEED, TOY_VLM
    toy = resolve_models(None, None, None, None)
    assert (toy.vlm, toy.llm, toy.base, toy.eval_set) == (str(TOY_VLM), str(TOY_LLM), str(TOY_SEED), str(TOY_EVAL))
    assert toy.other_donors == (("LLM from another init (no shared seed)", str(TOY_LLM_NOSEED)),)
    noseed = resolve_models("toy-noseed", None, None, None)
    assert noseed.llm == str(TOY_LLM_NOSEED) and noseed.other_donors[0][1] == str(TOY_LLM)
    mine = resolve_models("toy", None, "/my/llm", None)  # one model overridden: no alternatives to it
    assert (mine.vlm, mine.llm, mine.other_donors) == (str(TOY_VLM), "/my/llm", ())
    custom = resolve_models(None, "/v", "/l", None)
    assert (custom.vlm, custom.llm, custom.base, custom.eval_set) == ("/v", "/l", None, None)
    assert resolve_models("qwen2.5-vl-7b", None, None, None).eval_set is None
    with pytest.raises(MergescopeError, match="name both models"):
        resolve_models(None, "/v", None, None)


@pytest.mark.parametrize("name, roles, head", [
    ("qwen3-vl-8b", {"q_norm", "k_norm"}, "lm_head"),
    ("gemma-3-27b", {"q_norm", "k_norm", "pre_feedforward_layernorm", "post_feedforward_layernorm"}, None),
    ("llama-3.2-11b-vision", set(), "lm_head"),
])
def test_family_quirks_map_to_the_donor(name, roles, head):
    """Qwen3's and Gemma 3's extra norms are slots of their own (Gemma's head is tied: no head slot);
    Mllama's cross-attention q/k norms and gates are VLM-only."""
    vlm_config, llm_config, _, _ = CONFIGS[name]
    vlm, llm = meta_model(vlm_config), meta_model(llm_config)
    layout = build_layout(vlm, MetaWeights(vlm, name), MetaWeights(llm, known_pair(name).llm))
    assert roles <= set(layout.roles())
    assert ("lm_head" in layout.roles()) == (head is not None)
    q_norms = {s.group for s in layout.slots if s.role == "q_norm"}
    assert q_norms <= {"self_attn"}
    if name.startswith("llama"):
        assert len(layout.vlm_only) == 8 * 13 and not {"q_norm", "cross_attn_attn_gate"} & set(layout.roles())
