"""Real-size random model pairs on disk, written shard by shard (benchmarks at 0.3–7 B).

`build_qwen_pair` instantiates the models (fine at ≤ 0.4 B); at 3 B and up that would need the
model twice in RAM in fp32. Here the tensor names and shapes come from a model on the meta device,
and each shard is generated and saved on its own (peak memory: about two shards), as sharded bf16
safetensors with an index — what a hub checkpoint looks like. The VLM's files use the names
`save_pretrained` writes (`model.layers.*`, `visual.*`, `lm_head.weight`); the donor's text tensors
have the same names.

Values: every tensor is a window, at a random offset, of one pool of N(0, 0.02²) numbers (norm
weights: 1 + that); the donor tensor is the VLM's plus `noise` × another window. Not i.i.d. across
tensors — irrelevant to apply/restore timings and to generation speed, and ~50× faster to write than
`normal_` on a 2-core CPU. Deterministic in `seed`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from .tiny import DecoderShape, qwen_configs, qwen_processor
from .tokenizer import build_tokenizer

POOL = 1 << 24


def _saved_name(name: str) -> str:
    """The runtime parameter name → the name save_pretrained writes for Qwen2.5-VL."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def _window(pool: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A fresh tensor of `shape` filled with consecutive pool values from a random offset (wrapping)."""
    n = math.prod(shape)
    out = torch.empty(n, dtype=pool.dtype)
    pos = 0
    offset = int(torch.randint(0, pool.numel(), (1,), generator=gen))
    while pos < n:
        take = min(n - pos, pool.numel() - offset)
        out[pos:pos + take] = pool[offset:offset + take]
        pos, offset = pos + take, 0
    return out.view(shape)


def _shards(specs: list[tuple[str, tuple[int, ...]]], shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, shape in specs:
        nbytes = 2 * math.prod(shape)
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    return shards + [current] if current else shards


def write_qwen_pair_sharded(root: str | Path, shape: DecoderShape, *, vocab_size: int, noise: float = 0.3,
                            seed: int = 0, shard_bytes: int = 2 * 2**30, vision_depth: int = 2,
                            vision_hidden: int = 64) -> tuple[Path, Path]:
    """A random bf16 Qwen2.5-VL VLM (small vision tower, processor) and Qwen2 donor, sharded.

    Returns (vlm_dir, llm_dir). Disk: about 2 × the decoder's bf16 bytes (+ the vision tower)."""
    root = Path(root)
    tokenizer = build_tokenizer()
    config, donor_config = qwen_configs(shape, tokenizer, vocab_size=vocab_size, vision_depth=vision_depth,
                                        vision_hidden=vision_hidden, max_positions=4096)
    config.dtype = donor_config.dtype = torch.bfloat16
    config.architectures, donor_config.architectures = ["Qwen2_5_VLForConditionalGeneration"], ["Qwen2ForCausalLM"]
    with torch.device("meta"):
        meta = Qwen2_5_VLForConditionalGeneration(config)
    specs = [(_saved_name(n), tuple(t.shape)) for n, t in meta.state_dict().items()]
    del meta
    vlm_dir, llm_dir = root / "vlm", root / "llm"
    for d in (vlm_dir, llm_dir):
        d.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL, generator=gen).mul_(0.02).to(torch.bfloat16)
    noise_pool = torch.randn(POOL, generator=gen).mul_(0.02 * noise).to(torch.bfloat16)
    groups = _shards(specs, shard_bytes)
    maps: dict[str, dict[str, str]] = {"vlm": {}, "llm": {}}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        vlm_part, llm_part = {}, {}
        for name, shp in group:
            value = _window(pool, shp, gen)
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                value.add_(1)
            vlm_part[name] = value
            if not name.startswith("visual."):
                llm_part[name] = value + _window(noise_pool, shp, gen)
        save_file(vlm_part, str(vlm_dir / file), metadata={"format": "pt"})
        maps["vlm"].update(dict.fromkeys(vlm_part, file))
        if llm_part:
            save_file(llm_part, str(llm_dir / file), metadata={"format": "pt"})
            maps["llm"].update(dict.fromkeys(llm_part, file))
        del vlm_part, llm_part
    for d, key in ((vlm_dir, "vlm"), (llm_dir, "llm")):
        total = sum(2 * math.prod(s) for n, s in specs if n in maps[key])
        (d / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": maps[key]}, indent=1))
    config.save_pretrained(vlm_dir)
    qwen_processor(tokenizer).save_pretrained(vlm_dir)
    donor_config.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return vlm_dir, llm_dir
