"""Tiny random model pairs of the families whose layout needs more than names: built locally, no hub.

`build_mllama_pair` makes a Llama 3.2 Vision (Mllama) VLM whose decoder interleaves gated
cross-attention layers with self-attention layers, and a Llama donor with only the self-attention
layers (as Llama 3.1 is to Llama 3.2 Vision), holding the VLM's self-attention layers + noise in order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3ImageProcessor,
                          Gemma3Processor, Gemma3TextConfig, GotOcr2ImageProcessor, Idefics3Config,
                          Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor, InternVLConfig,
                          InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor,
                          LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessor,
                          LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, Qwen2Config, Qwen2ForCausalLM, LlamaConfig, LlamaForCausalLM, Mistral3Config,
                          Mistral3ForConditionalGeneration, MistralConfig, MistralForCausalLM, MllamaConfig,
                          MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor,
                          PixtralImageProcessor, PixtralProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor,
                          Qwen3Config, Qwen3ForCausalLM, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                          Qwen3VLProcessor, Qwen3VLVideoProcessor)

from .tiny import DecoderShape, _perturb_into, save_donor
from .tokenizer import CHAT_TEMPLATE, build_tokenizer

# Llama 3.2 Vision's chat template, reduced: an image part is "<|image|>" before the text.
MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def mllama_donor_state(vlm: MllamaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The VLM's self-attention layers renumbered consecutively, as a Llama causal LM's state dict
    (`model.layers.<mapped>...`, `model.embed_tokens.weight` cut to the text vocabulary, `lm_head.weight`)."""
    decoder = vlm.get_decoder()
    extra = set(vlm.config.text_config.cross_attention_layers)
    kept = [i for i in range(len(decoder.layers)) if i not in extra]
    rows = vlm.config.text_config.vocab_size
    state = {"model.embed_tokens.weight": decoder.embed_tokens.weight[:rows], "model.norm.weight": decoder.norm.weight,
             "lm_head.weight": vlm.get_output_embeddings().weight}
    for mapped, index in enumerate(kept):
        for key, value in decoder.layers[index].state_dict().items():
            state[f"model.layers.{mapped}.{key}"] = value
    return state


def build_mllama_pair(root: str | Path, shape: DecoderShape = DecoderShape(num_hidden_layers=3),
                      cross_attention_layers: tuple[int, ...] = (1, 3), *, noise: float = 0.3,
                      seed: int = 0) -> tuple[Path, Path]:
    """A tiny Mllama VLM with `shape.num_hidden_layers` self-attention layers plus cross-attention
    layers at `cross_attention_layers` (VLM indices), its processor, and a Llama donor with the
    self-attention layers only; returns (vlm_dir, llm_dir). The VLM's embedding has Mllama's 8 extra
    rows (the image token is the first of them), which the donor lacks."""
    root = Path(root)
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    vocab = len(tokenizer)  # the text vocabulary; the image token is the first of Mllama's 8 extra rows
    tokenizer.add_tokens(["<|image|>", "<|python_tag|>"], special_tokens=True)
    tokenizer.chat_template = MLLAMA_TEMPLATE
    layers = shape.num_hidden_layers + len(cross_attention_layers)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                   pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    text = dict(shape.as_dict(), vocab_size=vocab, num_hidden_layers=layers, rms_norm_eps=1e-5,
                max_position_embeddings=512, cross_attention_layers=list(cross_attention_layers),
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **special)
    config = MllamaConfig(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=2, image_size=28, patch_size=14, max_num_tiles=1,
                           intermediate_layers_indices=[0], vision_output_dim=64,
                           supported_aspect_ratios=[[1, 1]]),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(seed)
    vlm = MllamaForConditionalGeneration(config).eval()
    vlm_dir = root / "vlm"
    vlm.save_pretrained(vlm_dir)
    MllamaProcessor(MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=1),
                    tokenizer, chat_template=MLLAMA_TEMPLATE).save_pretrained(vlm_dir)
    donor_config = LlamaConfig(**{k: v for k, v in text.items() if k != "cross_attention_layers"})
    donor_config.num_hidden_layers = shape.num_hidden_layers
    donor = LlamaForCausalLM(donor_config).eval()
    _perturb_into(donor, mllama_donor_state(vlm), noise, seed + 1)
    donor.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return vlm_dir, root / "llm"


# -- one builder per family: tiny config, real processor, a donor of the text LLM's class ---------
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-6)


def chat_template(image_part: str) -> str:
    """ChatML with `image_part` where an image goes (the family's placeholder, expanded by its processor)."""
    return CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", image_part)


def family_tokenizer(image_tokens: list[str], named: dict[str, str] | None = None):
    """(tokenizer, text vocabulary): the toy BPE plus the family's image tokens, which are rows the
    donor (whose vocabulary is the text vocabulary) lacks; `named` sets attributes such as boi_token."""
    base = build_tokenizer()
    vocab = len(base)
    base.add_tokens(image_tokens, special_tokens=True)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=base._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, extra_special_tokens=named or {})
    return tokenizer, vocab


def _special(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))


def _save_family(root: Path, config, vlm_cls, processor, donor, tokenizer, seed: int, noise: float) -> tuple[Path, Path]:
    torch.manual_seed(seed)
    vlm = vlm_cls(config).eval()
    vlm.save_pretrained(root / "vlm")
    processor.save_pretrained(root / "vlm")
    return root / "vlm", save_donor(vlm, donor, root / "llm", noise=noise, seed=seed, tokenizer=tokenizer)


def build_qwen3_vl_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """Qwen3-VL (q/k norms; DeepStack features added to the first 2 decoder layers) + a Qwen3 donor."""
    tokenizer, vocab = family_tokenizer([])
    tokenizer.chat_template = CHAT_TEMPLATE
    text = dict(TINY_TEXT, **_special(tokenizer), vocab_size=len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(text, rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                                                "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"), tie_word_embeddings=False)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16, merge_size=2,
                                              temporal_patch_size=2),
        video_processor=Qwen3VLVideoProcessor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    donor = Qwen3ForCausalLM(Qwen3Config(**text, rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    return _save_family(Path(root), config, Qwen3VLForConditionalGeneration, processor, donor, tokenizer, seed, noise)


def build_gemma3_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """Gemma 3 (q/k norms, four norms per layer, tied head, 3 image tokens the donor lacks) + a Gemma 3 text donor."""
    tokenizer, vocab = family_tokenizer(["<start_of_image>", "<image_soft_token>", "<end_of_image>"],
                                        {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>",
                                         "eoi_token": "<end_of_image>"})
    template = chat_template("<start_of_image>")
    tokenizer.chat_template = template
    text = dict(TINY_TEXT, **_special(tokenizer), sliding_window=16, query_pre_attn_scalar=8)
    ids = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(text_config=dict(text, vocab_size=len(tokenizer)),
                          vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14),
                          mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"),
                          eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"))
    processor = Gemma3Processor(Gemma3ImageProcessor(size={"height": 28, "width": 28}), tokenizer,
                                chat_template=template, image_seq_length=4)
    donor = Gemma3ForCausalLM(Gemma3TextConfig(**text, vocab_size=vocab))
    return _save_family(Path(root), config, Gemma3ForConditionalGeneration, processor, donor, tokenizer, seed, noise)


def build_mistral3_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """Mistral 3 (Pixtral tower, 3 image tokens the donor lacks) + a Mistral donor; like the hub repos,
    the VLM folder also holds a native-format `consolidated.safetensors`, which is not the model's."""
    tokenizer, vocab = family_tokenizer(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    template = chat_template("[IMG]")
    tokenizer.chat_template = template
    text = dict(TINY_TEXT, **_special(tokenizer), model_type="mistral")
    config = Mistral3Config(text_config=dict(text, vocab_size=len(tokenizer)),
                            vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                               image_size=56, patch_size=14),
                            spatial_merge_size=2, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
                            tie_word_embeddings=False)
    processor = PixtralProcessor(PixtralImageProcessor(size={"longest_edge": 56}, patch_size=14), tokenizer,
                                 patch_size=14, spatial_merge_size=2, chat_template=template)
    text.pop("model_type")
    donor = MistralForCausalLM(MistralConfig(**text, vocab_size=vocab, tie_word_embeddings=False))
    dirs = _save_family(Path(root), config, Mistral3ForConditionalGeneration, processor, donor, tokenizer, seed, noise)
    save_file({"layers.0.attention.wq.weight": torch.zeros(4, 4)}, dirs[0] / "consolidated.safetensors")
    return dirs


def build_llava_onevision_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """LLaVA-OneVision (SigLIP tower, Qwen2 decoder, 2 image tokens the donor lacks) + a Qwen2 donor."""
    tokenizer, vocab = family_tokenizer(["<image>", "<video>"])
    template = chat_template("<image>")
    tokenizer.chat_template = template
    text = dict(TINY_TEXT, **_special(tokenizer), model_type="qwen2")
    config = LlavaOnevisionConfig(text_config=dict(text, vocab_size=len(tokenizer)),
                                  vision_config=dict(model_type="siglip_vision_model", hidden_size=32,
                                                     intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                                     image_size=28, patch_size=14),
                                  image_grid_pinpoints=[[28, 28]], vision_feature_layer=-1,
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"), tie_word_embeddings=False)
    processor = LlavaOnevisionProcessor(
        LlavaOnevisionImageProcessor(size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]]), tokenizer,
        LlavaOnevisionVideoProcessor(), num_image_tokens=4, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", chat_template=template)
    text.pop("model_type")
    donor = Qwen2ForCausalLM(Qwen2Config(**text, vocab_size=vocab, tie_word_embeddings=False))
    return _save_family(Path(root), config, LlavaOnevisionForConditionalGeneration, processor, donor, tokenizer,
                        seed, noise)


def build_internvl_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """InternVL (InternViT tower, Qwen2 decoder, 4 image tokens the donor lacks) + a Qwen2 donor."""
    tokenizer, vocab = family_tokenizer(["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
                                        {"start_image_token": "<img>", "end_image_token": "</img>",
                                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    template = chat_template("<IMG_CONTEXT>")
    tokenizer.chat_template = template
    text = dict(TINY_TEXT, **_special(tokenizer), model_type="qwen2")
    config = InternVLConfig(text_config=dict(text, vocab_size=len(tokenizer)),
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=[28, 28], patch_size=[14, 14]),
                            downsample_ratio=0.5, image_seq_length=1,
                            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), tie_word_embeddings=False)
    processor = InternVLProcessor(GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=False),
                                  tokenizer, InternVLVideoProcessor(), image_seq_length=1, chat_template=template)
    text.pop("model_type")
    donor = Qwen2ForCausalLM(Qwen2Config(**text, vocab_size=vocab, tie_word_embeddings=False))
    return _save_family(Path(root), config, InternVLForConditionalGeneration, processor, donor, tokenizer, seed, noise)


def build_idefics3_pair(root: Path, seed: int = 0, noise: float = 0.3) -> tuple[Path, Path]:
    """Idefics3 / SmolVLM (SigLIP tower, Llama decoder under `model.text_model`, 4 image tokens the
    donor lacks; one image is one global tile, no splitting) + a Llama donor."""
    tokenizer, vocab = family_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    template = chat_template("<image>")
    tokenizer.chat_template = template
    text = dict(TINY_TEXT, **_special(tokenizer))
    config = Idefics3Config(text_config=LlamaConfig(**text, vocab_size=len(tokenizer), tie_word_embeddings=False),
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=28, patch_size=14),
                            scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            tie_word_embeddings=False)
    processor = Idefics3Processor(Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 28},
                                                         max_image_size={"longest_edge": 28}),
                                  tokenizer, image_seq_len=1, chat_template=template)
    donor = LlamaForCausalLM(LlamaConfig(**text, vocab_size=vocab, tie_word_embeddings=False))
    return _save_family(Path(root), config, Idefics3ForConditionalGeneration, processor, donor, tokenizer, seed, noise)
