"""Quantized checkpoints: which we dequantize on read (block-scaled FP8) and which we refuse.

Mergescope merges full-precision tensors. A quantized checkpoint stores something else under (or
beside) the weight names, and merging those bytes as if they were weights gives garbage without an
error (FP8 values merged raw: max |w| 224 instead of 0.08). So every checkpoint is classified when it
is opened, from `config.json`'s `quantization_config.quant_method` and, because configs go missing
and files get partly converted, from the tensor names quantizers write (`qweight`, `absmax`, ...).

Accepted: fine-grained FP8 (`quant_method: fp8`, `F8_E4M3` weights with a `<name>_scale_inv` block
scale beside each, `weight_block_size: [rows, cols]`), as DeepSeek-V3 and the Qwen FP8 releases ship
it; it is dequantized tensor by tensor on read (`dequantize_fp8_blocks`). Refused, naming the method:
everything else (gptq, awq, bitsandbytes, compressed-tensors, fbgemm_fp8, hqq, ...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.errors import CheckpointError

SCALE_INV_SUFFIX = "_scale_inv"  # `x.weight` is dequantized with `x.weight_scale_inv`
FP8_DEFAULT_BLOCK = (128, 128)   # transformers' FineGrainedFP8Config default, used when the config has none
# The last name component quantizers write beside or instead of `weight`, and the method it betrays.
QUANTIZED_NAMES = {
    "qweight": "gptq/awq", "qzeros": "gptq/awq", "g_idx": "gptq", "scales": "gptq/awq",
    "absmax": "bitsandbytes", "quant_map": "bitsandbytes", "nested_absmax": "bitsandbytes",
    "SCB": "bitsandbytes", "weight_format": "bitsandbytes",
    "weight_packed": "compressed-tensors", "weight_zero_point": "compressed-tensors",
    "weight_global_scale": "compressed-tensors", "weight_shape": "compressed-tensors",
    "weight_scale": "fp8/int8 with per-tensor or per-channel weight_scale (compressed-tensors, fbgemm)",
}


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint is quantized: `method` (e.g. "fp8", "gptq"), the FP8 `block` (rows, cols)
    when it is dequantized on read, and `evidence` (where we saw it: the config or a tensor name)."""

    method: str
    evidence: str
    block: tuple[int, int] | None = None

    @property
    def dequantized(self) -> bool:
        """Whether Mergescope reads this checkpoint by dequantizing it (only block-scaled FP8)."""
        return self.block is not None

    def describe(self) -> str:
        """One line for reports: 'fp8, 128×128 blocks, dequantized on read' or 'gptq (refused)'."""
        if self.dequantized:
            return f"{self.method}, {self.block[0]}×{self.block[1]} blocks, dequantized on read"
        return f"{self.method} (refused; from {self.evidence})"


def read_quantization_config(folder: Path) -> dict | None:
    """`quantization_config` of `folder/config.json` (top level or the text config's), or None."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the loader reports a broken config; here it only means "no quantization seen"
    if not isinstance(config, dict):
        return None
    for holder in (config, config.get("text_config") or {}):
        quant = holder.get("quantization_config") if isinstance(holder, dict) else None
        if isinstance(quant, dict):
            return quant
    return None


def detect_quantization(config: dict | None, keys: list[str]) -> Quantization | None:
    """Classify a checkpoint from its `quantization_config` (may be None) and its tensor names.

    Raises CheckpointError for an FP8 config we cannot read (not e4m3, or a malformed block size)."""
    if config is not None:
        method = str(config.get("quant_method", "unknown")).lower()
        if method != "fp8":
            return Quantization(method, "config.json quantization_config")
        fmt = str(config.get("fmt", "e4m3")).lower()
        block = config.get("weight_block_size") or FP8_DEFAULT_BLOCK
        if fmt != "e4m3" or not (isinstance(block, (list, tuple)) and len(block) == 2
                                 and all(isinstance(b, int) and b > 0 for b in block)):
            return Quantization(f"fp8 ({fmt}, weight_block_size {block!r})", "config.json quantization_config")
        return Quantization("fp8", "config.json quantization_config", (block[0], block[1]))
    by_last: dict[str, str] = {}
    for key in keys:
        last = "quant_state" if ".quant_state." in key else key.rsplit(".", 1)[-1]
        by_last.setdefault(last, key)
    for last, method in list(QUANTIZED_NAMES.items()) + [("quant_state", "bitsandbytes")]:  # in that order
        if last in by_last:
            return Quantization(method, f"tensor {by_last[last]!r}")
    scale = next((k for k in keys if k.endswith(SCALE_INV_SUFFIX)), None)
    if scale is not None:  # block scales without a config: the block size is unknown, the scales unusable
        return Quantization("fp8 without quantization_config", f"tensor {scale!r}")
    return None


def refusal(path: Path, role: str, quant: Quantization) -> CheckpointError:
    """The one-line error for a checkpoint whose quantization Mergescope does not read."""
    return CheckpointError(f"{path}: the {role} is quantized ({quant.method}, from {quant.evidence}); Mergescope "
                           f"merges full-precision weights only — use the unquantized checkpoint")


def block_scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int] | None:
    """The scale_inv shape that tiles a 2-D weight `shape` with `block` (partial edge blocks), or None
    for a weight that is not 2-D (block scaling is defined for matrices only)."""
    if len(shape) != 2:
        return None
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Block-wise FP8 dequantization: float32 [R, C] from F8_E4M3 `weight` [R, C] and float `scale_inv`
    [ceil(R/br), ceil(C/bc)], w[i, j] = float(weight[i, j]) · scale_inv[i // br, j // bc]; edge blocks
    are partial. The formula of DeepSeek-V3's `weight_dequant` (inference/kernel.py) and transformers'
    FineGrainedFP8 (`weight_scale_inv` is the inverse of the quantization scale: a multiplier).

    Raises CheckpointError when `scale_inv`'s shape does not tile `weight` with `block`."""
    expected = block_scale_shape(tuple(weight.shape), block)
    br, bc = block
    if expected is None or tuple(scale_inv.shape) != expected:
        raise CheckpointError(f"FP8 tensor {list(weight.shape)} with scale_inv {list(scale_inv.shape)} does not "
                              f"match weight_block_size [{br}, {bc}] (expected scale_inv {list(expected or [])})")
    rows, cols = weight.shape
    scale = scale_inv.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    return weight.float() * scale
