"""Element-wise writes (restores, `linear`), queued on the CPU write pool or a `WriteBatch`, and the
per-slot record that lets a switch queue them again without looking anything up.

`queue_copy` / `queue_lerp` send one write to the pool (cpu_pool.py: CPU, contiguous, at least
POOL_MIN_ELEMENTS) or else to the caller's group calls (fused.py). Both paths run the same kernel on
the same tensors: `copy_`, or `torch.lerp(θ_V, θ_L, α, out=θ)` — for half types one pass that
computes in fp32 and rounds once, which is `methods.linear`'s half-type arithmetic.

A switch between two `linear` plans writes every changed tensor with one such kernel, yet the general
path (`MergeEngine._compute`) spends tens of µs of Python per tensor getting there (method lookup,
inputs through the feeder and the checkpoint, fusability, the pool's size check). Holding the GIL, that
Python also keeps the pool's workers from picking up their next job, so it adds to the kernels rather
than overlapping them. `KeptWrite` keeps what the general path found for one parameter on the CPU —
its head and tail views, the original's and the donor's kept memory-mapped views (rows cut as the
layout says), the bytes — so the next restore or `linear` write of it is one call that queues
exactly the kernels `_compute` would (the weights are bit-identical). The views stay valid while the
files keep their mapping and the engine keeps its donor; the engine drops its records otherwise.
"""

from __future__ import annotations

import torch

from merging.engine import cpu_pool
from merging.engine.cpu_pool import CpuPool
from merging.engine.fused import WriteBatch, lerp_fusable
from merging.io.checkpoint import SAFETENSORS_DTYPES, Checkpoint
from merging.io.reads import ApplyReads
from merging.model.pair import ModelPair
from merging.model.layout import Slot
from merging.plan.merge_plan import Target


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _is_view(checkpoint: Checkpoint, key: str, tensor: torch.Tensor) -> bool:
    """Whether `tensor`, read from `key` of `checkpoint`, is its stored dtype (so the kept view itself)."""
    return SAFETENSORS_DTYPES.get(checkpoint.dtype_code(key)) == tensor.dtype


def _copy(out: torch.Tensor, src: torch.Tensor, pool: CpuPool, batch: WriteBatch, pooled: bool) -> None:
    if pooled:
        pool.submit(torch.Tensor.copy_, out, src)
    else:
        batch.copy(out, src)


def _lerp(out: torch.Tensor, vlm: torch.Tensor, donor: torch.Tensor, alpha: float, pool: CpuPool,
          batch: WriteBatch, pooled: bool) -> None:
    if pooled:
        pool.submit(lambda o, v, d: torch.lerp(v, d, alpha, out=o), out, vlm, donor)
    else:
        batch.lerp(out, vlm, donor, alpha)


def queue_copy(out: torch.Tensor, src: torch.Tensor, pool: CpuPool, batch: WriteBatch, cpu: bool) -> None:
    """`out.copy_(src)` on the pool (CPU tensors it can chunk, `CpuPool.worth`) or on `batch`; it lands
    at `pool.finish()` / `batch.run`."""
    _copy(out, src, pool, batch, cpu and CpuPool.worth(out, src))


def queue_linear(out: torch.Tensor, vlm_rows: torch.Tensor, donor: torch.Tensor, alpha: float, pool: CpuPool,
                 batch: WriteBatch, cpu: bool) -> bool:
    """`linear`'s value at `alpha` into `out` when it is one kernel (α 0 or 1: a copy; half types: one
    `torch.lerp`, see `fused.lerp_fusable`), on the pool or on `batch`; False, nothing queued, when it
    is not (the method's own function writes it)."""
    if alpha in (0, 1):  # linear's endpoints are exact copies
        queue_copy(out, vlm_rows if alpha == 0 else donor, pool, batch, cpu)
    elif lerp_fusable(out, vlm_rows, donor):
        _lerp(out, vlm_rows, donor, alpha, pool, batch, cpu and CpuPool.worth(out, vlm_rows, donor))
    else:
        return False
    return True


class KeptWrite:
    """One CPU parameter's restore and `linear` write, prepared: `param` [rows_V, ...] (written in place),
    its `original` [rows_V, ...] and the `donor`'s first `rows` rows (kept views, never written)."""

    __slots__ = ("param", "original", "donor", "rows", "head", "vlm_rows", "tail", "fusable", "contiguous",
                 "restore_read", "merge_read", "written", "last_read")

    def __init__(self, param: torch.Tensor, original: torch.Tensor, donor: torch.Tensor, rows: int):
        self.param, self.original, self.donor, self.rows = param, original, donor, rows
        self.head, self.vlm_rows = (param[:rows], original[:rows]) if rows < param.shape[0] else (param, original)
        # vocab mismatch: the VLM keeps its extra rows; else None
        self.tail = (param[rows:], original[rows:]) if rows < param.shape[0] else None
        self.fusable = lerp_fusable(param, original, donor)  # else only restores and endpoints are kept
        # what CpuPool.worth checks, less the size (POOL_MIN_ELEMENTS is read at each write)
        self.contiguous = all(t.is_contiguous() for t in (param, original, donor))
        self.restore_read, self.written = _nbytes(original), _nbytes(param)
        self.merge_read = self.restore_read + _nbytes(donor)
        self.last_read = 0  # bytes the last queued write reads

    def queue(self, alpha: float | None, pool: CpuPool, batch: WriteBatch) -> bool:
        """Queue the restore (`alpha` None) or `linear`'s value at `alpha` (True), or nothing (False) when
        `linear` at `alpha` is not one kernel here."""
        least = cpu_pool.POOL_MIN_ELEMENTS if self.contiguous else None
        if alpha is None:
            _copy(self.param, self.original, pool, batch, least is not None and self.param.numel() >= least)
            self.last_read = self.restore_read
            return True
        if not (self.fusable or alpha in (0, 1)):
            return False
        if self.tail is not None:
            _copy(*self.tail, pool, batch, least is not None and self.tail[0].numel() >= least)
        pooled = least is not None and self.head.numel() >= least
        if alpha in (0, 1):  # linear's endpoints are exact copies
            _copy(self.head, self.vlm_rows if alpha == 0 else self.donor, pool, batch, pooled)
        else:
            _lerp(self.head, self.vlm_rows, self.donor, alpha, pool, batch, pooled)
        self.last_read = self.merge_read
        return True


class KeptWrites:
    """The engine's `KeptWrite`s by slot name, for the files' current mappings and the current donor."""

    def __init__(self):
        self._by_slot: dict[str, KeptWrite] = {}
        self._for: tuple = ()  # the mappings and the donor the views belong to
        self._files: tuple[Checkpoint, ...] = ()  # (VLM files, donor) of the last renew

    def renew(self, vlm_files: Checkpoint, donor: Checkpoint) -> None:
        """At the start of an apply, after the files were checked: drop every record when a file was
        mapped afresh (a restored copy: views of the new map from now on) or the donor changed."""
        self._files = (vlm_files, donor)
        now = (vlm_files.mapping(), donor, donor.mapping())
        if now != self._for:
            self._by_slot.clear()
            self._for = now

    def prepare(self, slot: Slot, param: torch.Tensor, original: torch.Tensor, donor: torch.Tensor, rows: int,
                pair: ModelPair) -> None:
        """Keep `slot`'s writes (inputs as the general path fetched them on the CPU) when both inputs are
        the files' kept views: a converted or dequantized copy would hold memory, and is made afresh."""
        if _is_view(pair.vlm_files, slot.vlm_key, original) and _is_view(pair.donor, slot.donor_key, donor):
            self._by_slot[slot.name] = KeptWrite(param, original, donor, rows)

    def clear(self) -> None:
        self._by_slot.clear()

    def __len__(self) -> int:
        return len(self._by_slot)

    def queue(self, name: str, target: Target | None, reads: ApplyReads, pool: CpuPool,
              batch: WriteBatch) -> KeptWrite | None:
        """Queue `name`'s restore (`target` None) or `linear` write from its record; returns the record
        (its bytes: `last_read`, `written`), or None with nothing queued when there is no record or
        `target` is another method or not one kernel. The files it reads are checked first where a
        method's code ran since their last check (`reads.ready`; a restore does not read, nor check,
        the donor, which may be the file that failed: recovery must not depend on it)."""
        kept = self._by_slot.get(name)
        if kept is None or (target is not None and target.method != "linear"):
            return None
        if reads.ready(*self._files[:1 if target is None else 2]):
            self.renew(*self._files)  # a file mapped afresh: its records go
            kept = self._by_slot.get(name)
            if kept is None:
                return None
        return kept if kept.queue(None if target is None else target.alpha, pool, batch) else None
