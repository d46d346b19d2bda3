"""Tiny random model pairs of the families whose layout needs more than names: built locally, no hub.

`build_mllama_pair` makes a Llama 3.2 Vision (Mllama) VLM whose decoder interleaves gated
cross-attention layers with self-attention layers, and a Llama donor with only the self-attention
layers (as Llama 3.1 is to Llama 3.2 Vision), holding the VLM's self-attention layers + noise in order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MllamaConfig, MllamaForConditionalGeneration,
                          MllamaImageProcessorPil, MllamaProcessor)

from .tiny import DecoderShape, _perturb_into
from .tokenizer import build_tokenizer

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
