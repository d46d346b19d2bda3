"""Where VLM and donor diverged: per layer × role relative distance and cosine similarity.

rel_l2 = ‖θ_L − θ_V‖ / ‖θ_V‖ and cosine = ⟨θ_V, θ_L⟩ / (‖θ_V‖‖θ_L‖), over all tensors of one role
in one layer (weight and bias together), accumulated in fp64 over chunks so no model-sized
temporary is ever made. Originals come from the VLM's files, so the report does not depend on the
plan the resident weights hold.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from merging.methods import CHUNK_ELEMENTS
from merging.model.pair import ModelPair


def role_distances(pair: ModelPair) -> list[dict]:
    """One row per (layer, role): {layer, role, group, rel_l2, cosine}; layer None = outside layers."""
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # ‖V‖², ‖L‖², ⟨V,L⟩, ‖L−V‖²
    groups = {}
    for slot in pair.layout.slots:
        rows = slot.shared_rows or slot.shape[0]
        vlm = pair.vlm_files.get(slot.vlm_key)[:rows].reshape(-1)
        donor = pair.donor.get(slot.donor_key)[:rows].reshape(-1)
        acc = sums[(slot.layer, slot.role)]
        groups[(slot.layer, slot.role)] = slot.group
        for start in range(0, vlm.numel(), CHUNK_ELEMENTS):
            v = vlm[start:start + CHUNK_ELEMENTS].to(torch.float64)
            d = donor[start:start + CHUNK_ELEMENTS].to(torch.float64)
            acc[0] += float(v.square().sum())
            acc[1] += float(d.square().sum())
            acc[2] += float((v * d).sum())
            acc[3] += float((d - v).square().sum())
    rows = []
    for (layer, role), (vv, ll, vl, diff) in sums.items():
        rows.append({"layer": layer, "role": role, "group": groups[(layer, role)],
                     "rel_l2": math.sqrt(diff) / math.sqrt(vv) if vv > 0 else (0.0 if diff == 0 else math.inf),
                     "cosine": vl / math.sqrt(vv * ll) if vv > 0 and ll > 0 else 0.0})
    return rows
