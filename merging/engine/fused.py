"""One apply's element-wise writes (restores, `linear` on half types), gathered and run as group calls.

The engine's per-tensor path costs a method dispatch, an input fetch and a hand-over per tensor; for
writes that are one element-wise kernel each, that Python is as long as the kernel itself at a few MB
a tensor. A `WriteBatch` collects (out, inputs) over the whole apply and runs:

- copies (restores, α = 0 or 1, the VLM's extra vocabulary rows) as ONE `torch._foreach_copy_` per
  device: a multi-tensor kernel on CUDA (what `torch.optim` uses to avoid a launch per tensor);
- interpolations as `torch.lerp(θ_V, θ_L, α, out=θ)` per tensor in one tight loop: one pass over
  memory (read V and L, write θ), each element computed in fp32 and rounded once, exactly the
  arithmetic of `methods.linear`'s half-type branch, so the weights do not depend on the path.
  torch has no multi-tensor lerp that writes into a third list: `_foreach_copy_` then
  `_foreach_lerp_` would be two passes (5 units of memory traffic for 3).

On the CPU the same writes go to the write pool instead (merging/engine/cpu_pool.py, `POOL_MIN_ELEMENTS`):
single-threaded workers taking small tensors in batches and large ones in chunks, with no OpenMP
fork-join per kernel — on a shared CPU one preempted OpenMP thread stalls every join, and
`benchmarks/switch.py` measures both. Inputs are the checkpoints' kept views
(`Checkpoint.get(..., check=False)`); the engine checks each file once per apply (merging/io/reads.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

HALF_TYPES = (torch.bfloat16, torch.float16)  # where torch.lerp computes in fp32 and rounds once


def lerp_fusable(out: torch.Tensor, vlm: torch.Tensor, donor: torch.Tensor) -> bool:
    """Whether `methods.linear` writes these tensors with a single torch.lerp (same half dtype,
    same device), so a batch may write them instead."""
    return (out.dtype == vlm.dtype == donor.dtype and out.dtype in HALF_TYPES
            and out.device == vlm.device == donor.device)


class WriteBatch:
    """Copies and lerps queued during one apply, written by `run()` (shapes must match per pair).

    The queued inputs stay allocated until `run` (on a GPU: device copies of the originals and donor
    tensors), so the caller runs the batch whenever `full` says it holds FLUSH_BYTES of inputs."""

    FLUSH_BYTES = 512 * 2**20

    def __init__(self):
        self._copies: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = defaultdict(
            lambda: ([], []))
        self._lerps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]] = []
        self._held = 0  # bytes of queued inputs

    @property
    def full(self) -> bool:
        """Whether the queued inputs hold FLUSH_BYTES or more."""
        return self._held >= self.FLUSH_BYTES

    def __len__(self) -> int:
        return sum(len(outs) for outs, _ in self._copies.values()) + len(self._lerps)

    def copy(self, out: torch.Tensor, src: torch.Tensor) -> None:
        """Queue `out.copy_(src)` (same shape; src on out's device)."""
        outs, srcs = self._copies[out.device]
        outs.append(out)
        srcs.append(src)
        self._held += src.numel() * src.element_size()

    def lerp(self, out: torch.Tensor, vlm: torch.Tensor, donor: torch.Tensor, alpha: float) -> None:
        """Queue `torch.lerp(vlm, donor, alpha, out=out)` (see `lerp_fusable`)."""
        self._lerps.append((out, vlm, donor, alpha))
        self._held += 2 * out.numel() * out.element_size()

    def run(self, before: Callable[[], None]) -> None:
        """Write everything queued, after calling `before()` (the caller's file checks) if anything is;
        the batch is empty afterwards, also when a kernel raised."""
        if not len(self):
            return
        before()
        copies, lerps = self._copies, self._lerps
        self._copies, self._lerps, self._held = defaultdict(lambda: ([], [])), [], 0
        for outs, srcs in copies.values():
            torch._foreach_copy_(outs, srcs)
        for out, vlm, donor, alpha in lerps:
            torch.lerp(vlm, donor, alpha, out=out)
