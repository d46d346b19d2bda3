"""MergeEngine: apply a merge plan to the resident VLM in place, incrementally, restorably.

State is one dict, slot name → the `Target` that tensor currently holds (absent = the VLM's
original). Applying a plan resolves it to targets (validating everything before the first write),
then writes only the tensors whose target differs and restores the ones that left the plan. Each
write recomputes from the VLM's original and the donor — never from the current value — so the
same plan gives bit-identical weights whatever was applied before.

Originals are re-read from the VLM's own safetensors (memory-mapped: no extra resident memory). On
first touch the engine checks that the file value, cast to the parameter's dtype, equals the loaded
parameter bit for bit; where it does not (a dtype cast the loader did differently, weights edited
after loading), it keeps a CPU copy of that tensor instead.

Element-wise writes (restores, `linear` on half types) skip the methods' per-tensor machinery: on the
CPU they go to a pool of single-threaded workers, small tensors batched, large ones chunked
(cpu_pool.py); elsewhere they are gathered into group calls (fused.py). Bookkeeping is per apply: each
file is checked once per apply, and again only after a method's own code ran (merging/io/reads.py);
on the CPU each parameter's restore and `linear` write is prepared once and kept (kept.py), so a
switch queues its kernels without per-tensor lookups. On a GPU inputs come, as bit-exact copies,
from an LRU device cache (`device_cache_bytes`) or through pinned staging buffers (staging.py).

If anything fails mid-apply, the engine rewrites the touched tensors back to the previous plan (or,
should even that fail, to the pure VLM) before re-raising: `engine.plan` always says what they hold.

Methods get what they declare in `Method.context`: the tensor's decoder-relative name (DARE seeds
its mask with it) and, for RegMean, the Gram matrices of the layer's input in the VLM and the donor,
from Gram files (`python -m merging grams`) attached with `MergeEngine(pair, grams={"vlm": path,
"donor": path})` or `set_grams`: checked against the models' fingerprints at once, memory-mapped, read
only when a regmean tensor is written. A plan whose regmean rules cover a linear layer without Grams
fails before the first write; the Gram files' fingerprints are part of a regmean tensor's target.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import torch

from merging.io.checkpoint import Checkpoint
from merging.engine.cpu_pool import CpuPool
from merging.errors import LayoutError, MergescopeError, PlanError
from merging.engine.fused import WriteBatch
from merging.engine.kept import KeptWrites, queue_copy, queue_linear
from merging.stats.gram_files import GramFile, GramSet, decoder_linears
from merging.model.layout import Layout, Slot, build_layout, mapped_rel
from merging.methods import Method, get_method
from merging.model.pair import ModelPair, check_base_covers
from merging.plan.merge_plan import MergePlan, Target
from merging.io.reads import ApplyReads
from merging.engine.staging import Feeder

_DIRTY = Target("<being written>", float("nan"))  # marks a tensor whose write may have been cut short


@dataclass
class ApplyReport:
    """What one `apply` did: which tensors it wrote or restored, bytes read and written, seconds taken."""
    plan_hash: str
    written: list[str] = field(default_factory=list)    # tensors set to a (new) merged value
    restored: list[str] = field(default_factory=list)   # tensors set back to the VLM's original
    bytes_read: int = 0                                  # originals + donor (+ base) bytes read
    bytes_written: int = 0
    seconds: float = 0.0


class MergeEngine:
    """The resident VLM's merge state: applies plans in place, restores, exports single tensors.

    Thread-safe: `apply`, `restore`, `set_donor`, `set_grams` and generation (callers hold `lock`)
    run one at a time. Raises PlanError for a plan that does not fit the models (before any write),
    LayoutError for a donor of another architecture, MergescopeError for bad Gram files.
    """

    def __init__(self, pair: ModelPair, grams: dict[str, str] | None = None, *,
                 device_cache_bytes: int | None = None, staging: bool | None = None,
                 write_workers: int | None = None):
        """`device_cache_bytes`: budget of the LRU cache of originals and donor tensors on the
        parameters' device, per device (None: a quarter of the free memory on CUDA, 0 on the CPU;
        see merging/engine/device_cache.py). `staging`: host → device copies through pinned buffers (None:
        on CUDA). `write_workers`: threads for element-wise writes on the CPU (merging/engine/cpu_pool.py)."""
        self.pair = pair
        self._cache_bytes, self._staging = device_cache_bytes, staging
        self._feeders: dict[torch.device, Feeder] = {}
        self._pool = CpuPool(write_workers)
        self.lock = threading.RLock()  # apply + generate run under it: one plan in the weights at a time
        self._slots: dict[str, Slot] = {s.name: s for s in pair.layout.slots}
        named = dict(pair.vlm.named_parameters())
        self._params: dict[str, torch.Tensor] = {name: named[name] for name in self._slots}
        self._state: dict[str, Target] = {}
        self._plan = MergePlan()
        self._verified: set[str] = set()
        self._snapshots: dict[str, torch.Tensor] = {}  # originals the files could not reproduce
        self._reads = ApplyReads()
        # plan → (layout, targets, the ones RegMean needs Grams for), reused while the layout stays
        self._resolved: dict[tuple[str, bool], tuple[Layout, dict[str, Target], list[str]]] = {}
        self._kept = KeptWrites()  # each CPU parameter's restore and linear write, prepared (kept.py)
        linears = set(decoder_linears(pair.vlm))
        # slot name → decoder-relative module name, for the weights of linear layers (RegMean's domain)
        linear_modules = {s.name: s.rel[:-len(".weight")] for s in pair.layout.slots
                          if s.rel.endswith(".weight") and s.rel[:-len(".weight")] in linears}
        donor_modules = {n: mapped_rel(m, pair.layout.layer_map) for n, m in linear_modules.items()}
        self.gram_set = GramSet(linear_modules, {n: self._params[n].shape[1] for n in linear_modules}, donor_modules)
        if grams:
            unknown = sorted(set(grams) - {"vlm", "donor"})
            if unknown:
                raise MergescopeError(f"grams: unknown key(s) {unknown}; give {{'vlm': path, 'donor': path}}")
            self.set_grams(grams.get("vlm"), grams.get("donor"))

    @property
    def plan(self) -> MergePlan:
        """The plan the resident weights hold right now."""
        return self._plan

    # -- Gram statistics (RegMean) -------------------------------------------------------------
    def set_grams(self, vlm: str | None, donor: str | None) -> ApplyReport | None:
        """Attach (or, with None, detach) the VLM's and the current donor's Gram files.

        Both are validated against the models' fingerprints and, if the current plan uses RegMean,
        against what it needs, before anything changes; then the regmean tensors are rewritten with
        the new statistics (the returned report says which; None when nothing changed). A bad file
        leaves the engine as it was (MergescopeError or PlanError).
        """
        with self.lock:
            files = {role: self.gram_set.open(path, ckpt, role)
                     for role, path, ckpt in (("vlm", vlm, self.pair.vlm_files), ("donor", donor, self.pair.donor))
                     if path is not None}
            donor_fp = self.pair.donor.fingerprint()
            previous = self.gram_set.files(donor_fp)
            self.gram_set.install(files, donor_fp)
            try:
                targets = self._targets(self._plan)  # the current plan must still be satisfiable
            except PlanError:
                self.gram_set.install(previous, donor_fp)
                raise
            if targets == self._state:
                return None
            try:
                return self.apply(self._plan)
            except BaseException:
                self.gram_set.install(previous, donor_fp)
                self._recover(self._plan)
                raise

    def gram_files(self) -> dict[str, GramFile]:
        """The attached Gram files a merge with the current donor uses, by role ("vlm", "donor")."""
        return self.gram_set.files(self.pair.donor.fingerprint())

    def gram_fingerprints(self, donor: Checkpoint | None = None) -> dict[str, str | None]:
        """Identity of the Gram files a merge with `donor` (default: the current one) uses — part of what
        a regmean answer depends on. Lock-free: a cache lookup never waits behind a running answer."""
        return self.gram_set.fingerprints((donor or self.pair.donor).fingerprint())

    def resolve(self, plan: MergePlan) -> dict[str, Target]:
        """Slot name → what `plan` makes it hold, validated (PlanError) without touching any weight."""
        with self.lock:
            return self._targets(plan)

    def _targets(self, plan: MergePlan) -> dict[str, Target]:
        key = (plan.hash(), self.pair.base is not None)  # resolving walks every slot: reuse the last few
        layout, resolved, grams = self._resolved.get(key, (None, None, None))
        if layout is not self.pair.layout:
            layout, resolved = self.pair.layout, plan.targets(self.pair.layout, key[1])
            # non-linear tensors of a regmean rule are merged linearly: only linear layers need Grams
            grams = [name for name, t in resolved.items()
                     if get_method(t.method).needs_grams and name in self.gram_set.linear_modules]
            self._resolved[key] = layout, resolved, grams
            while len(self._resolved) > 16:
                del self._resolved[next(iter(self._resolved))]
        targets = dict(resolved)  # Targets are immutable; the dict is the caller's
        needing = {name: targets[name].method for name in grams}
        if needing:
            identity = self.gram_set.identity(needing, self.pair.donor.fingerprint())
            for name in needing:
                targets[name] = replace(targets[name], grams=identity)
        return targets

    # -- donors ----------------------------------------------------------------------------------
    def donor_layout(self, donor: Checkpoint) -> Layout:
        """The mapping to another donor checkpoint; refuses one that would not merge the same tensors."""
        layout = build_layout(self.pair.vlm, self.pair.vlm_files, donor)
        layout.require_compatible()
        layout.check_coverage(self.pair.allow_partial, donor.path)
        if [s.name for s in layout.slots] != list(self._slots):
            raise LayoutError(f"{donor.path}: does not map onto the same VLM tensors as the current donor "
                              f"({len(layout.slots)} vs {len(self._slots)}); pick a donor of the same architecture")
        if self.pair.base is not None:
            check_base_covers(layout, self.pair.base, self.pair.base_keys)
        return layout

    def set_donor(self, donor: Checkpoint, layout: Layout | None = None) -> None:
        """Merge with `donor` from now on (same architecture; see `donor_layout`).

        The weights go back to the pure VLM first (every merged value came from the old donor), so
        the caller applies its plan again. A donor's Gram file stays with that donor: it is used
        again when the donor comes back; a new donor has none until `set_grams` attaches one.
        """
        with self.lock:
            if donor is self.pair.donor:
                return
            layout = layout or self.donor_layout(donor)
            self.restore()
            self.pair = replace(self.pair, donor=donor, layout=layout)  # the loaded pair itself is left as it was
            self._slots = {s.name: s for s in layout.slots}
            self._kept.clear()

    # -- applying plans ------------------------------------------------------------------------
    def apply(self, plan: MergePlan) -> ApplyReport:
        """Make the resident weights equal `plan`'s merge, touching only tensors that change."""
        with self.lock, torch.no_grad():
            targets = self._targets(plan)  # under the lock: it reads the attached Gram files
            # a file truncated under us fails here, before the first write (CheckpointError), so the
            # weights keep the current plan; reads check again after a method's own code ran (reads.py)
            self.pair.check_files()
            self._reads.start(self.pair.vlm_files, self.pair.donor, self.pair.base)
            self._kept.renew(self.pair.vlm_files, self.pair.donor)
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
        """Host memory the engine holds beyond the model itself: original copies it had to keep,
        pinned staging buffers, and device-cache entries when that device is the CPU."""
        return (sum(t.numel() * t.element_size() for t in self._snapshots.values())
                + sum(f.host_bytes() for f in self._feeders.values()))

    def clear_device_cache(self) -> None:
        """Drop every device-cache entry (its memory goes back to the allocator); the budget stays."""
        with self.lock:
            for feeder in self._feeders.values():
                feeder.cache.clear()

    def device_cache_stats(self) -> dict[str, int]:
        """The device caches' budget, bytes used, entries, hits, misses and evictions (summed over devices)."""
        stats = {"budget": 0, "used": 0, "entries": 0, "hits": 0, "misses": 0, "evictions": 0}
        for feeder in self._feeders.values():
            for k, v in feeder.cache.stats().items():
                stats[k] += v
        return stats

    def donor_bytes_used(self) -> int:
        """Donor bytes the current plan reads (distinct tensors)."""
        return sum(self.pair.donor.nbytes(k) for k in {self._slots[name].donor_key for name in self._state})

    # -- internals ---------------------------------------------------------------------------
    def _write_all(self, targets: dict[str, Target], report: ApplyReport) -> None:
        done: list[tuple[str, Target | None]] = []
        batch = WriteBatch()
        self._reads.new_batch()
        try:
            for name in list(self._state) + [n for n in targets if n not in self._state]:
                target = targets.get(name)
                if self._state.get(name) == target:
                    continue
                self._state[name] = _DIRTY
                if not self._queue_kept(name, target, report, batch):
                    self._compute(self._slots[name], target, self._params[name], report, batch)
                done.append((name, target))
                if batch.full:
                    batch.run(self._reads.before_batch)
            batch.run(self._reads.before_batch)
        except BaseException:
            self._pool.finish(raise_error=False)  # no write may still be running when recovery starts
            raise
        self._pool.finish()  # queued CPU chunks land (or raise) before any state says "written"
        for name, target in done:
            if target is None:
                del self._state[name]
                report.restored.append(name)
            else:
                self._state[name] = target
                report.written.append(name)

    def _queue_kept(self, name: str, target: Target | None, report: ApplyReport, batch: WriteBatch) -> bool:
        """Queue `name`'s write from its kept record, if it has one (see KeptWrites.queue)."""
        kept = self._kept.queue(name, target, self._reads, self._pool, batch)
        if kept:
            report.bytes_read += kept.last_read
            report.bytes_written += kept.written
        return bool(kept)

    def _recover(self, previous: MergePlan) -> None:
        try:
            self._write_all(self._targets(previous), ApplyReport(""))
            self._plan = previous
        except BaseException:
            self._write_all({}, ApplyReport(""))  # plain copies of originals: the last resort
            self._plan = MergePlan()

    def _original(self, slot: Slot, param: torch.Tensor) -> torch.Tensor:
        """The VLM's original value of `slot`, in the parameter's dtype, on the CPU."""
        if slot.name in self._snapshots:
            return self._snapshots[slot.name]
        original = self._reads.read(self.pair.vlm_files, slot.vlm_key)
        if original.dtype != param.dtype:
            original = original.to(param.dtype)
        if slot.name not in self._verified:
            # first touch: the parameter still holds the loaded original, so compare
            if not torch.equal(original, param.detach().cpu()):
                self._snapshots[slot.name] = param.detach().to("cpu", copy=True)
                return self._snapshots[slot.name]
            self._verified.add(slot.name)
        return original

    def _feeder(self, device: torch.device) -> Feeder:
        if device not in self._feeders:
            self._feeders[device] = Feeder(device, self._cache_bytes, self._staging)
        return self._feeders[device]

    def _inputs(self, slot: Slot, target: Target | None, param: torch.Tensor, device: torch.device, rows: int,
                needs_base: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(original, donor rows, base rows) on `device`: from the device cache, else from the files."""
        feeder = self._feeder(device)
        original = feeder.fetch(("vlm", slot.name, param.dtype), lambda: self._original(slot, param))
        if target is None:
            return original, None, None
        donor_ckpt = self.pair.donor
        donor = feeder.fetch(("donor", donor_ckpt.fingerprint(), slot.donor_key, rows),
                             lambda: self._reads.read(donor_ckpt, slot.donor_key, rows))
        base = None
        if needs_base:
            key = self.pair.base_keys[slot.name]
            base = feeder.fetch(("base", self.pair.base.fingerprint(), key, rows),
                                lambda: self._reads.read(self.pair.base, key, rows))
        return original, donor, base

    def _compute(self, slot: Slot, target: Target | None, out: torch.Tensor, report: ApplyReport,
                 batch: WriteBatch) -> None:
        """Write `target`'s value of `slot` into `out` (the parameter, or a scratch tensor like it); element-
        wise writes are queued (kept.py): the caller's `batch.run` and `self._pool.finish()` land them."""
        param, device = self._params[slot.name], out.device
        method = get_method(target.method) if target is not None else None
        rows = slot.shared_rows or param.shape[0]
        needs_base = method is not None and method.needs_base
        original, donor, base = self._inputs(slot, target, param, device, rows, needs_base)
        if donor is not None and out is param and self._feeder(device).passthrough:
            self._kept.prepare(slot, param, original, donor, rows, self.pair)
        report.bytes_read += sum(t.numel() * t.element_size() for t in (original, donor, base) if t is not None)
        report.bytes_written += out.numel() * out.element_size()
        cpu = device.type == "cpu"
        if target is None:
            return queue_copy(out, original, self._pool, batch, cpu)
        head, vlm_rows = out, original
        if rows < param.shape[0]:  # vocab mismatch: the VLM keeps its extra rows
            queue_copy(out[rows:], original[rows:], self._pool, batch, cpu)
            head, vlm_rows = out[:rows], original[:rows]
        if target.method != "linear" or not queue_linear(head, vlm_rows, donor, target.alpha, self._pool, batch, cpu):
            self._method(slot, method, target, head, vlm_rows, donor, base)

    def _method(self, slot: Slot, method: Method, target: Target, out: torch.Tensor, vlm: torch.Tensor,
                donor: torch.Tensor, base: torch.Tensor | None) -> None:
        """One tensor through its method's own function (on the pool when it is element-wise)."""
        params = dict(target.params)
        context = {}
        if "name" in method.context:
            context["name"] = slot.rel
        if "grams" in method.context:
            context["grams"] = self.gram_set.pair_for(slot.name, self.pair.donor.fingerprint(), out.device)
        pooled = out.device.type == "cpu" and method.elementwise
        if pooled and not context and CpuPool.fits(out, vlm, donor, base):
            alpha = target.alpha
            self._pool.submit(lambda o, v, d, b: method.fn(o, v, d, b, alpha, **params), out, vlm, donor, base)
        else:
            method.fn(out, vlm, donor, base, target.alpha, **params, **context)
            self._reads.method_ran()

    def export_tensor(self, slot_name: str, target: Target | None) -> torch.Tensor:
        """`target`'s value of one tensor on the CPU, without changing the resident weights.

        Equal, bit for bit, to what `apply` writes (methods are pure): a tensor that already holds
        `target` is copied out of the model; any other is computed into a scratch tensor on the
        parameter's device (so device-specific arithmetic and DARE masks are the same).
        """
        slot = self._slots[slot_name]
        param = self._params[slot_name]
        with self.lock, torch.no_grad():
            if self._state.get(slot_name) == target:
                return param.detach().to("cpu", copy=True)
            scratch = torch.empty_like(param)
            self._reads.start()  # the files are checked before the export reads them
            try:
                self._compute(slot, target, scratch, ApplyReport(""), batch := WriteBatch())
                batch.run(self._reads.before_batch)
            finally:
                self._pool.finish()
            return scratch.to("cpu")
