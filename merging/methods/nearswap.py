"""NearSwap: take the donor's value where it is close to the VLM's, interpolate towards it in inverse
proportion to the distance elsewhere. mergekit takes no per-model weights here: α scales the move."""

from __future__ import annotations

from typing import Optional

import torch

from merging.methods.interpolation import toward_chunks
from merging.methods.registry import MergekitSpec, ParamDef, Tensor, merge_method

T = ParamDef("t", float, 1e-4, 0.0, 10.0,
             "distance scale: entries with |θ_L − θ_V| ≤ t take θ_L, farther ones move t/|θ_L − θ_V| of the way "
             "(mergekit requires t; 1e-4 as in its reference merge)")


def nearswap_chunk(a: Tensor, b: Tensor, t: float) -> Tensor:
    """mergekit's nearswap with the VLM as its base, on fp32 chunks of θ_V (a) and θ_L (b):
    w = clamp(t/max(|a − b|, 1e-6), 0, 1), w·b + (1 − w)·a."""
    weight = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a


@merge_method("nearswap", formula="w = clamp(t/|θ_L − θ_V|, 0, 1); M = w·θ_L + (1 − w)·θ_V; "
                                  "θ = θ_V + α·(M − θ_V) (mergekit's nearswap with the VLM as base is α = 1)",
              source="alchemonaut, QuartetAnemoi-70B (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001); "
                     "mergekit `nearswap`",
              params=(T,),
              mergekit=MergekitSpec("vlm", "none", shared=("t",), keep=(("t", 0.0),)))
def nearswap(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, **params) -> None:
    """NearSwap with the VLM in mergekit's base role; α moves from θ_V to the NearSwap merge."""
    toward_chunks(out, vlm, alpha, lambda a, b: nearswap_chunk(a, b, params["t"]), donor)
