"""Build small random model pairs on disk that share a language backbone, for tests and benchmarks.

A "pair" is a VLM folder and a donor-LLM folder whose decoders have identical shapes. The donor
starts from the VLM's own decoder weights plus noise (a stand-in for fine-tuning from a shared seed),
so merges between them are meaningful and their distance is known. Everything is generated locally:
no hub access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (CLIPImageProcessorPil, LlamaConfig, LlavaProcessor, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                          Qwen2VLVideoProcessor)

from .tokenizer import build_tokenizer

# Kept identical between VLM text config and donor config: a mismatch would not change any tensor
# shape, but would silently change the donor's logits (Qwen2-VL and Qwen2 differ in the defaults).
SHARED_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                    "max_position_embeddings", "hidden_act", "tie_word_embeddings")


@dataclass(frozen=True)
class DecoderShape:
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    tie_word_embeddings: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _perturb_into(donor: torch.nn.Module, source: dict[str, torch.Tensor], noise: float, seed: int) -> None:
    """Set donor weights = source (matched by name) + relative Gaussian noise; deterministic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in donor.named_parameters():
            base = source[name].to(param.dtype)
            scale = noise * base.float().abs().mean().clamp_min(1e-3)  # norms (all ones) diverge too
            param.copy_(base + scale * torch.randn(base.shape, generator=gen).to(param.dtype))


def _decoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VLM's language model as a causal LM state dict: `model.<rel>` and `lm_head.weight`."""
    state = {f"model.{k}": v for k, v in model.get_decoder().state_dict().items()}
    state["lm_head.weight"] = model.get_output_embeddings().weight
    return state


def qwen_configs(shape: DecoderShape, tokenizer, *, vocab_size: int | None = None, vision_depth: int = 2,
                 vision_hidden: int = 32, max_positions: int = 512) -> tuple[Qwen2_5_VLConfig, Qwen2Config]:
    """The Qwen2.5-VL config of a VLM with decoder `shape` and the Qwen2 config of its donor LLM.

    `vocab_size` defaults to the tokenizer's size (a larger one, like the real 151936, leaves ids
    no tokenizer produces: fine for benchmarks)."""
    ids = tokenizer.convert_tokens_to_ids
    special = dict(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    text = dict(shape.as_dict(), **special, vocab_size=vocab_size or len(tokenizer), rms_norm_eps=1e-6,
                max_position_embeddings=max_positions,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": _mrope_section(shape)})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=2, out_hidden_size=shape.hidden_size, fullatt_block_indexes=[vision_depth - 1],
                           window_size=56, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=shape.tie_word_embeddings, **special,
    )
    donor_config = Qwen2Config(**{k: getattr(config.text_config, k) for k in SHARED_TEXT_KEYS},
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **special)
    return config, donor_config


def qwen_processor(tokenizer) -> Qwen2_5_VLProcessor:
    """The (small-image) Qwen2.5-VL processor the tiny VLMs ship with."""
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14,
                                              merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def build_qwen_pair(root: str | Path, shape: DecoderShape = DecoderShape(), *, noise: float = 0.3,
                    seed: int = 0, dtype: torch.dtype = torch.float32,
                    vision_depth: int = 2, vision_hidden: int = 32) -> tuple[Path, Path]:
    """A tiny Qwen2.5-VL VLM (with processor) and a Qwen2 donor LLM; returns (vlm_dir, llm_dir)."""
    root = Path(root)
    tokenizer = build_tokenizer()
    config, donor_config = qwen_configs(shape, tokenizer, vision_depth=vision_depth, vision_hidden=vision_hidden)
    torch.manual_seed(seed)
    vlm = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    vlm_dir = root / "vlm"
    vlm.save_pretrained(vlm_dir)
    qwen_processor(tokenizer).save_pretrained(vlm_dir)
    return vlm_dir, save_donor(vlm, Qwen2ForCausalLM(donor_config), root / "llm", noise=noise, seed=seed,
                               tokenizer=tokenizer)


def _mrope_section(shape: DecoderShape) -> list[int]:
    """Qwen's multimodal rotary split of head_dim/2 into (temporal, height, width) sections."""
    half = shape.hidden_size // shape.num_attention_heads // 2
    spatial = 3 * half // 8  # Qwen2.5-VL-7B: head_dim 128 → [16, 24, 24]
    return [half - 2 * spatial, spatial, spatial]


def save_donor(vlm: torch.nn.Module, donor: torch.nn.Module, out: str | Path, *, noise: float = 0.3,
               seed: int = 0, tokenizer=None) -> Path:
    """Save `donor` (a causal LM with the VLM's decoder shape) holding the VLM's decoder + noise.

    A donor with a smaller vocabulary takes the VLM's first rows.
    """
    source = _decoder_state(vlm)
    rows = donor.get_input_embeddings().weight.shape[0]
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        source[key] = source[key][:rows]
    donor = donor.to(next(vlm.parameters()).dtype).eval()
    _perturb_into(donor, source, noise, seed + 1)
    donor.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return Path(out)


def build_llava_pair(root: str | Path, shape: DecoderShape = DecoderShape(), *, noise: float = 0.3,
                     seed: int = 0, dtype: torch.dtype = torch.float32, vocab_extra: int = 0) -> tuple[Path, Path]:
    """A tiny LLaVA VLM (CLIP tower + Llama decoder) and a Llama donor; returns (vlm_dir, llm_dir).

    `vocab_extra` > 0 gives the VLM that many more vocabulary rows than the donor (as when image
    tokens are added), to exercise partial-row merging.
    """
    root = Path(root)
    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    text = dict(shape.as_dict(), vocab_size=vocab + vocab_extra, rms_norm_eps=1e-5, max_position_embeddings=512)
    config = LlavaConfig(
        text_config=LlamaConfig(**text),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                           projection_dim=32),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    vlm = LlavaForConditionalGeneration(config).to(dtype).eval()
    vlm_dir = root / "vlm"
    vlm.save_pretrained(vlm_dir)
    LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28},
                                                                crop_size={"height": 28, "width": 28}),
                   tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<|image_pad|>", num_additional_image_tokens=1,  # CLIP's CLS
                   chat_template=tokenizer.chat_template).save_pretrained(vlm_dir)
    donor = LlamaForCausalLM(LlamaConfig(**dict(text, vocab_size=vocab)))
    return vlm_dir, save_donor(vlm, donor, root / "llm", noise=noise, seed=seed, tokenizer=tokenizer)
