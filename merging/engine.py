"""MergeEngine: apply a merge plan to the resident VLM in place, incrementally, restorably.

State is one dict, slot name → the `Target` that tensor currently holds (absent = the VLM's
original). Applying a plan resolves it to targets (validating everything before the first write),
then writes only the tensors whose target differs and restores the ones that left the plan.
Each write recomputes from the VLM's original and the donor — never from the current, possibly
merged, value — so the same plan gives bit-identical weights whatever was applied before.

Originals are re-read from the VLM's own safetensors (memory-mapped: no extra resident memory).
On first touch the engine checks that the file value, cast to the parameter's dtype, equals the
loaded parameter bit for bit; where it does not (a dtype cast the loader did differently, weights
edited after loading), it keeps a copy of that one tensor on the CPU instead.

If anything fails mid-apply, the engine rewrites the touched tensors back to the previous plan
(or, should even that fail, to the pure VLM) before re-raising: the weights are never left
half-merged, and `engine.plan` always says what they hold.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from .layout import Slot
from .methods import get_method
from .pair import ModelPair
from .plan import MergePlan, Target

_DIRTY = Target("<being written>", float("nan"))  # marks a tensor whose write may have been cut short


@dataclass
class ApplyReport:
    plan_hash: str
    written: list[str] = field(default_factory=list)    # tensors set to a (new) merged value
    restored: list[str] = field(default_factory=list)   # tensors set back to the VLM's original
    bytes_read: int = 0                                  # originals + donor (+ base) bytes read
    bytes_written: int = 0
    seconds: float = 0.0


class MergeEngine:
    def __init__(self, pair: ModelPair):
        self.pair = pair
        self.lock = threading.RLock()  # apply + generate run under it: one plan in the weights at a time
        self._slots: dict[str, Slot] = {s.name: s for s in pair.layout.slots}
        self._params: dict[str, torch.Tensor] = {}
        named = dict(pair.vlm.named_parameters())
        for name in self._slots:
            self._params[name] = named[name]
        self._state: dict[str, Target] = {}
        self._plan = MergePlan()
        self._verified: set[str] = set()
        self._snapshots: dict[str, torch.Tensor] = {}  # originals the files could not reproduce

    @property
    def plan(self) -> MergePlan:
        """The plan the resident weights hold right now."""
        return self._plan

    def apply(self, plan: MergePlan) -> ApplyReport:
        """Make the resident weights equal `plan`'s merge, touching only tensors that change."""
        targets = plan.targets(self.pair.layout, has_base=self.pair.base is not None)
        with self.lock, torch.no_grad():
            start = time.perf_counter()
            report = ApplyReport(plan.hash())
            previous = self._plan
            try:
                self._write_all(targets, report)
            except BaseException:
                self._recover(previous)
                raise
            self._plan = plan
            report.seconds = time.perf_counter() - start
            return report

    def restore(self) -> ApplyReport:
        """Back to the pure VLM, bit for bit."""
        return self.apply(MergePlan())

    def extra_resident_bytes(self) -> int:
        """Memory the engine holds beyond the model itself (original copies it had to keep)."""
        return sum(t.numel() * t.element_size() for t in self._snapshots.values())

    def donor_bytes_used(self) -> int:
        """Donor bytes the current plan reads (distinct tensors)."""
        keys = {self._slots[name].donor_key for name in self._state}
        return sum(self.pair.donor.nbytes(k) for k in keys)

    # -- internals ---------------------------------------------------------------------------
    def _write_all(self, targets: dict[str, Target], report: ApplyReport) -> None:
        for name in list(self._state) + [n for n in targets if n not in self._state]:
            target = targets.get(name)
            if self._state.get(name) == target:
                continue
            self._state[name] = _DIRTY
            self._write(self._slots[name], target, report)
            if target is None:
                del self._state[name]
                report.restored.append(name)
            else:
                self._state[name] = target
                report.written.append(name)

    def _recover(self, previous: MergePlan) -> None:
        try:
            self._write_all(previous.targets(self.pair.layout, self.pair.base is not None), ApplyReport(""))
            self._plan = previous
        except BaseException:
            self._write_all({}, ApplyReport(""))  # plain copies of originals: the last resort
            self._plan = MergePlan()

    def _original(self, slot: Slot, param: torch.Tensor) -> torch.Tensor:
        """The VLM's original value of `slot`, in the parameter's dtype, on the CPU."""
        if slot.name in self._snapshots:
            return self._snapshots[slot.name]
        original = self.pair.vlm_files.get(slot.vlm_key).to(param.dtype)
        if slot.name not in self._verified:
            # first touch: the parameter still holds the loaded original, so compare
            if not torch.equal(original, param.detach().cpu()):
                self._snapshots[slot.name] = param.detach().to("cpu", copy=True)
                return self._snapshots[slot.name]
            self._verified.add(slot.name)
        return original

    def _write(self, slot: Slot, target: Target | None, report: ApplyReport) -> None:
        param = self._params[slot.name]
        device = param.device
        original = self._original(slot, param).to(device)
        report.bytes_read += original.numel() * original.element_size()
        report.bytes_written += param.numel() * param.element_size()
        if target is None:
            param.copy_(original)
            return
        method = get_method(target.method)
        rows = slot.shared_rows or param.shape[0]
        donor = self.pair.donor.get(slot.donor_key)[:rows].to(device)
        base = None
        if method.needs_base:
            base = self.pair.base.get(self.pair.base_keys[slot.name])[:rows].to(device)
            report.bytes_read += base.numel() * base.element_size()
        report.bytes_read += donor.numel() * donor.element_size()
        if rows < param.shape[0]:  # vocab mismatch: the VLM keeps its extra rows
            param[rows:].copy_(original[rows:])
        method.fn(param[:rows], original[:rows], donor, base, target.alpha, **dict(target.params))
