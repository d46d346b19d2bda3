"""Named model pairs (`--pair NAME`) and a memory check before anything large is loaded.

Each entry names a VLM, the text LLM that shares its language backbone, and where one exists the
common base model (for task arithmetic, TIES, DARE). The toy pairs are the project's own, shipped in
assets/toy and loaded for real in the tests; the hub pairs' tensor layouts are verified in the tests by
instantiating each architecture from hand-written configs on the meta device (no download).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from .errors import MergescopeError
from .toy import TOY_EVAL, TOY_LLM, TOY_LLM_NOSEED, TOY_SEED, TOY_VLM


@dataclass(frozen=True)
class KnownPair:
    vlm: str
    llm: str
    base: str | None
    note: str
    eval_set: str | None = None  # examples and sweep items served with the pair when none is named
    donor_label: str = "donor"   # the donor's name where several are offered
    other_donors: tuple[tuple[str, str], ...] = ()  # (label, folder or hub id): more donors of the same shape


SHARED_SEED, NO_SHARED_SEED = "LLM from the shared seed", "LLM from another init (no shared seed)"


def _toy_pair(llm: Path, label: str, other: Path, other_label: str, note: str) -> KnownPair:
    return KnownPair(str(TOY_VLM), str(llm), str(TOY_SEED), note, str(TOY_EVAL), label, ((other_label, str(other)),))


DEFAULT_PAIR = "toy"

KNOWN_PAIRS: dict[str, KnownPair] = {
    "toy": _toy_pair(TOY_LLM, SHARED_SEED, TOY_LLM_NOSEED, NO_SHARED_SEED,
                     "the trained toy pair shipped in assets/toy (CPU, offline): the default"),
    "toy-noseed": _toy_pair(TOY_LLM_NOSEED, NO_SHARED_SEED, TOY_LLM, SHARED_SEED,
                            "the toy VLM with a donor of the same shape trained from another random init: "
                            "merges that do not share a seed (the seed is not this donor's ancestor)"),
    "qwen2.5-vl-7b": KnownPair("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B",
                               "the reference pair of the blog post"),
    "qwen2.5-vl-3b": KnownPair("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B",
                               "tied embeddings"),
    "qwen2.5-vl-72b": KnownPair("Qwen/Qwen2.5-VL-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B",
                                "needs several GPUs: --device auto-multi"),
    "qwen2-vl-2b": KnownPair("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-1.5B",
                             "tied embeddings"),
    "smolvlm": KnownPair("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", None,
                         "Idefics3 layout; 3 added image tokens (shared rows merged)"),
    "llava-1.5-7b": KnownPair("llava-hf/llava-1.5-7b-hf", "lmsys/vicuna-7b-v1.5", None,
                              "LLaVA layout; 64 added tokens (shared rows merged)"),
}


def known_pair(name: str) -> KnownPair:
    if name not in KNOWN_PAIRS:
        raise MergescopeError(f"unknown pair {name!r}; choose one of {sorted(KNOWN_PAIRS)}")
    return KNOWN_PAIRS[name]


def model_class(config: PretrainedConfig):
    multimodal = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    return AutoModelForImageTextToText if multimodal else AutoModelForCausalLM


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The architecture of `config` with no storage behind its tensors (instant, no memory)."""
    with torch.device("meta"):
        return model_class(config).from_config(config)


def weight_bytes(config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Bytes the model's parameters take in `dtype` (tied tensors counted once)."""
    return sum(p.numel() for p in meta_model(config).parameters()) * dtype.itemsize


def available_bytes(device: str) -> int:
    """Free memory on `device`: the GPU's free memory, or the host's MemAvailable."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return torch.cuda.mem_get_info(index)[0]
    if device == "auto-multi" and torch.cuda.is_available():
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise MergescopeError("cannot tell how much memory is free on this machine")


def check_fits(config: PretrainedConfig, dtype: torch.dtype, device: str, free: int | None = None,
               headroom: float = 1.15) -> str:
    """A one-line memory estimate; raises MergescopeError when the VLM cannot fit on `device`.

    Counts the resident VLM's weights plus 15 % for activations, KV cache and allocator slack. The
    donor is memory-mapped and costs page cache, not resident memory.
    """
    need = int(weight_bytes(config, dtype) * headroom)
    free = available_bytes(device) if free is None else free
    line = (f"{config.model_type} in {str(dtype).removeprefix('torch.')} needs about {need / 2**30:.1f} GiB on "
            f"{device}; {free / 2**30:.1f} GiB free")
    if need > free:
        raise MergescopeError(line + " — it does not fit: pick a smaller pair, bfloat16, or another device")
    return line


def config_dtype(config: PretrainedConfig, dtype: str) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    text = getattr(config, "text_config", config)
    stored = getattr(config, "dtype", None) or getattr(text, "dtype", None) or torch.float32
    return getattr(torch, stored) if isinstance(stored, str) else stored


def load_config(path: str | Path) -> PretrainedConfig:
    return AutoConfig.from_pretrained(path, trust_remote_code=False)


def resolve_models(pair: str | None, vlm: str | None, llm: str | None, base: str | None) -> KnownPair:
    """The models to load from what the user named: `pair`'s, each overridable, the toy pair when
    nothing is named, and a clear error for a VLM without a donor or vice versa."""
    if not (pair or vlm or llm):
        pair = DEFAULT_PAIR
    if pair:
        known = known_pair(pair)
        if llm:  # another donor: the pair's alternatives were alternatives to its own donor
            known = replace(known, llm=llm, donor_label="donor", other_donors=())
        return replace(known, vlm=vlm or known.vlm, base=base or known.base)
    if not (vlm and llm):
        raise MergescopeError("name both models (--vlm and --llm), a pair (--pair NAME), or neither for the toy pair")
    return KnownPair(vlm, llm, base, "")
