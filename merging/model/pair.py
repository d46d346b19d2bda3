"""Load the resident VLM once; open the donor LLM (and an optional base model) lazily.

The VLM is instantiated with transformers (image-text-to-text class, or a causal LM in the VLM's
role). The donor and base are never instantiated: their safetensors are memory-mapped and only the
tensors a plan needs are ever read. A model is a local folder or a hub id (downloaded once, weights
as safetensors only); `trust_remote_code` stays off.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from merging.errors import CheckpointError, LayoutError, MergescopeError
from merging.limits import byte_size
from merging.io.checkpoint import Checkpoint
from merging.io.quantization import refusal
from merging.model.layout import Layout, build_layout

DTYPE_CHOICES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a VLM needs to run; a donor or base needs only its weights and config.
VLM_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json"]


def resolve_model_dir(name: str | Path, allow_patterns: list[str] = WEIGHT_FILES) -> Path:
    """A local folder as is; otherwise a hub id, fetched (safetensors + configs only) into the HF cache."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a model folder")
        return path
    if str(name).startswith((".", "/", "~")) or str(name).count("/") != 1:
        raise CheckpointError(f"{name}: no such folder, and not a hub id of the form 'owner/name'")
    try:
        # Mistral's repos also hold their native-format consolidated.safetensors: the same weights again
        return Path(snapshot_download(str(name), allow_patterns=allow_patterns, ignore_patterns=["consolidated*"]))
    except Exception as exc:  # offline, unknown repo, gated: one clear message
        raise CheckpointError(f"{name}: not a local folder and could not be fetched from the hub "
                              f"({type(exc).__name__}: {exc})") from exc


# -- memory: will the VLM fit? (checked before anything large is loaded) -----------------------
def model_class(config: PretrainedConfig):
    """The transformers auto class that loads `config`: image-text-to-text for a VLM, else causal LM."""
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
    line = (f"{config.model_type} in {str(dtype).removeprefix('torch.')} needs about {byte_size(need)} on "
            f"{device}; {byte_size(free)} free")
    if need > free:
        raise MergescopeError(line + " — it does not fit: pick a smaller pair, bfloat16, or another device")
    return line


def config_dtype(config: PretrainedConfig, dtype: str) -> torch.dtype:
    """The torch dtype a load with `dtype` gives ("auto": the config's stored dtype, float32 if none)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    text = getattr(config, "text_config", config)
    stored = getattr(config, "dtype", None) or getattr(text, "dtype", None) or torch.float32
    return getattr(torch, stored) if isinstance(stored, str) else stored


def load_config(path: str | Path) -> PretrainedConfig:
    """The model's config from a local folder, with remote code off."""
    return AutoConfig.from_pretrained(path, trust_remote_code=False)



def pick_device(device: str) -> torch.device | str:
    """`device` resolved ("auto": cuda, else mps, else cpu); MergescopeError for CUDA where there is none."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergescopeError(f"device {device!r} asked for, but CUDA is not available here")
    return device


@dataclass(frozen=True)
class ModelPair:
    """The resident VLM and lazily opened donor/base checkpoints, with the mapping between them.

    Frozen: the donor a merge uses now is the engine's state (`MergeEngine.pair` is this pair with the
    current donor and its layout), never a rewrite of the pair someone else holds."""

    vlm: torch.nn.Module
    processor: Any                  # a ProcessorMixin for a VLM, a tokenizer for a causal LM
    vlm_files: Checkpoint
    donor: Checkpoint
    base: Checkpoint | None
    layout: Layout
    base_keys: dict[str, str]       # slot name → key in the base checkpoint (empty without a base)
    allow_partial: bool = False     # donors lacking some mapped tensors merge the rest (else refused)

    def check_files(self) -> None:
        """CheckpointError if the VLM's, donor's or base's files changed on disk since they were opened
        (before a merge writes anything: a truncated mapped file would otherwise be SIGBUS mid-write)."""
        for ckpt in (self.vlm_files, self.donor, self.base):
            if ckpt is not None:
                ckpt.check_unchanged()

    def fingerprints(self) -> dict[str, str | None]:
        """Short content hashes of the VLM's, donor's and base's safetensors (None without a base)."""
        return {"vlm": self.vlm_files.fingerprint(), "donor": self.donor.fingerprint(),
                "base": self.base.fingerprint() if self.base else None}

    @property
    def is_multimodal(self) -> bool:
        """Whether the resident model reads images (its processor has an image processor)."""
        return hasattr(self.processor, "image_processor")


def load_vlm(path: Path, dtype: str = "auto", device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The VLM (eval mode, no grad) and its processor from a local folder, after a memory check.

    Raises MergescopeError for an unknown dtype, a missing device, or a model that does not fit."""
    if dtype not in DTYPE_CHOICES:
        raise MergescopeError(f"dtype {dtype!r}: choose one of {sorted(DTYPE_CHOICES)}")
    config = load_config(path)
    model_cls = model_class(config)
    multimodal = model_cls is AutoModelForImageTextToText
    device = pick_device(device)
    print(check_fits(config, config_dtype(config, dtype), str(device)), file=sys.stderr)  # before the load
    placement = {"device_map": "auto"} if device == "auto-multi" else {"device_map": device}
    model = model_cls.from_pretrained(path, dtype=DTYPE_CHOICES[dtype], use_safetensors=True,
                                      trust_remote_code=False, **placement)
    model.eval().requires_grad_(False)
    own_memory(model)
    processor = (AutoProcessor if multimodal else AutoTokenizer).from_pretrained(path, trust_remote_code=False)
    return model, processor


def _mapped_safetensors() -> list[tuple[int, int]] | None:
    """Address ranges of this process's memory-mapped .safetensors files, or None where /proc is absent."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and ".safetensors" in fields[5]:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def own_memory(model: torch.nn.Module) -> int:
    """Copy every CPU parameter and buffer that still reads from a memory-mapped safetensors file into
    the process's own memory; returns the bytes copied.

    transformers 5 leaves CPU weights whose dtype matches the file as views of the file's mapping, so
    truncating the VLM's file under a running app killed it with SIGBUS on the next generation. The
    copy costs the weights' size in anonymous memory instead of reclaimable page cache (the same
    resident size while the model is in use). Without /proc (not Linux) every CPU tensor is copied.
    """
    ranges = _mapped_safetensors()
    copied = 0
    for tensor in chain(model.parameters(), model.buffers()):
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        pointer = tensor.data_ptr()
        if ranges is None or any(start <= pointer < end for start, end in ranges):
            tensor.data = tensor.data.clone()
            copied += tensor.numel() * tensor.element_size()
    return copied


def check_base_covers(layout: Layout, base: Checkpoint, base_keys: dict[str, str]) -> None:
    """Refuse a base model that lacks (or has fewer rows of) a tensor the donor's layout merges."""
    missing = [s.name for s in layout.slots if s.name not in base_keys or
               base.shape(base_keys[s.name])[0] < (s.shared_rows or s.shape[0])]
    if missing:
        raise LayoutError(f"{base.path}: the base model lacks (or has fewer rows of) {len(missing)} "
                          f"tensor(s) the donor merges, e.g. {missing[:3]}")


def load_pair(vlm: str | Path, llm: str | Path, base: str | Path | None = None, *,
              dtype: str = "auto", device: str = "cpu", allow_partial: bool = False) -> ModelPair:
    """Load the VLM, open donor (and base) weights lazily, and map their tensors.

    `device` is cpu, cuda[:i], mps, auto (the best single device) or auto-multi (transformers'
    device_map="auto", for a VLM larger than one GPU). Refuses a donor whose shapes do not match, a
    quantized VLM, a donor or base quantized other than block-scaled FP8 (CheckpointError naming the
    method), and a donor lacking tensors the VLM maps unless `allow_partial` (LayoutError naming them).
    """
    vlm_dir = resolve_model_dir(vlm, VLM_FILES)
    vlm_files = Checkpoint(vlm_dir)  # validate the files before spending time on loading
    if vlm_files.quantization is not None:  # merged values are written into it in its own dtype
        raise refusal(vlm_files.path, "VLM", vlm_files.quantization)
    donor = Checkpoint(resolve_model_dir(llm))
    base_files = Checkpoint(resolve_model_dir(base)) if base is not None else None
    for role, ckpt in (("donor", donor), ("base", base_files)):  # fail before the slow VLM load
        if ckpt is not None and ckpt.quantization is not None and not ckpt.quantization.dequantized:
            raise refusal(ckpt.path, role, ckpt.quantization)
    model, processor = load_vlm(vlm_dir, dtype, device)
    layout = build_layout(model, vlm_files, donor)
    layout.require_compatible()
    layout.check_coverage(allow_partial, donor.path)
    base_keys = {}
    if base_files is not None:
        base_layout = build_layout(model, vlm_files, base_files, role="base")
        base_layout.require_compatible()
        base_keys = {s.name: s.donor_key for s in base_layout.slots}
        check_base_covers(layout, base_files, base_keys)
    return ModelPair(model, processor, vlm_files, donor, base_files, layout, base_keys, allow_partial)
