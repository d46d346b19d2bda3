"""Bringing a write's inputs (VLM original, donor, base) to the parameters' device.

`Feeder.fetch` answers from the device cache (`device_cache.DeviceCache`) when it can, else reads the
host tensor (a memory-mapped view) and moves it:

- with staging (default on CUDA): through pinned bounce buffers, `Stager.BUFFERS` of
  `Stager.BUFFER_BYTES`, rotated: the CPU copies piece i+1 from the page cache into one pinned buffer
  while the DMA engine sends piece i from the other on a side stream, and the compute stream waits
  only for the copy of the tensor it needs (an event), so the previous tensor's merge kernel overlaps
  the next tensor's transfer. A pageable `.to("cuda")` instead copies through the driver's own small
  staging area synchronously.
- without: `.to(device)` (a no-op on the CPU).

On the CPU, staging can be switched on explicitly (plain buffers, synchronous copies) so that tests
exercise the buffer rotation. Either way the tensor that arrives is a bit-exact copy of the host one.
"""

from __future__ import annotations

from typing import Callable, Hashable

import torch

from merging.engine.device_cache import DeviceCache, default_budget


ALIGN = 64  # bytes: the widest vector loads (AVX-512)


def empty_like_host(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor like `host` on `device`. On the CPU it starts at the same address
    modulo ALIGN as `host`: vectorised reductions (slerp's dot products) split their work by
    alignment, so a copy at another alignment (a memory-mapped view sits at its file offset) could
    round differently in the last bit. On a GPU every input is a fresh allocation anyway."""
    if device.type != "cpu" or host.numel() == 0:
        return torch.empty(host.shape, dtype=host.dtype, device=device)
    nbytes = host.numel() * host.element_size()
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
    shift = (host.data_ptr() - raw.data_ptr()) % ALIGN
    return raw[shift:shift + nbytes].view(host.dtype).view(host.shape)


class Stager:
    """Host → device copies of whole tensors through rotating (pinned, on CUDA) bounce buffers."""

    BUFFER_BYTES = 64 * 2**20
    BUFFERS = 2

    def __init__(self, device: torch.device | str, buffer_bytes: int | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.buffer_bytes = buffer_bytes or self.BUFFER_BYTES
        self._buffers: list[torch.Tensor] = []
        self._events: list[object | None] = [None] * self.BUFFERS
        self._next = 0
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None

    def host_bytes(self) -> int:
        """Host memory held by the bounce buffers (allocated on first use)."""
        return sum(b.numel() for b in self._buffers)

    def _buffer(self, i: int) -> torch.Tensor:
        while len(self._buffers) <= i:
            self._buffers.append(torch.empty(self.buffer_bytes, dtype=torch.uint8, pin_memory=self.cuda))
        return self._buffers[i]

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A new tensor on the device equal to `host` (a CPU tensor), bit for bit."""
        host = host.contiguous()
        out = empty_like_host(host, self.device)
        if host.numel() == 0:
            return out
        src, dst = host.view(-1).view(torch.uint8), out.view(-1).view(torch.uint8)
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        if self.cuda:
            self._stream.wait_stream(compute)  # `out` may reuse memory the compute stream last used
        for start in range(0, src.numel(), self.buffer_bytes):
            size = min(self.buffer_bytes, src.numel() - start)
            i, self._next = self._next, (self._next + 1) % self.BUFFERS
            buffer = self._buffer(i)
            if self._events[i] is not None:
                self._events[i].synchronize()  # the buffer's previous transfer has left it
            buffer[:size].copy_(src[start:start + size])
            if self.cuda:
                with torch.cuda.stream(self._stream):
                    dst[start:start + size].copy_(buffer[:size], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(self._stream)
                    self._events[i] = event
            else:
                dst[start:start + size].copy_(buffer[:size])
        if self.cuda:
            compute.wait_stream(self._stream)
            out.record_stream(self._stream)
        return out


class Feeder:
    """Merge inputs on one device: device cache first, else host → device (staged or not)."""

    def __init__(self, device: torch.device | str, cache_bytes: int | None = None, staging: bool | None = None):
        self.device = torch.device(device)
        budget = default_budget(self.device) if cache_bytes is None else int(cache_bytes)
        self.cache = DeviceCache(budget, self.device)
        use_staging = self.device.type == "cuda" if staging is None else staging
        self.stager = Stager(self.device) if use_staging else None
        self.direct = self.device.type == "cpu" and self.stager is None

    def host_bytes(self) -> int:
        """Host memory this feeder holds: bounce buffers, and cache entries when the device is the CPU."""
        cached = self.cache.used if self.device.type == "cpu" else 0
        return cached + (self.stager.host_bytes() if self.stager else 0)

    @property
    def passthrough(self) -> bool:
        """Whether `fetch` hands back what `load()` returns itself (the CPU without cache or staging)."""
        return self.direct and not self.cache.budget

    def _move(self, host: torch.Tensor) -> torch.Tensor:
        if self.stager is not None:
            return self.stager.to_device(host)
        return host.to(self.device)

    def fetch(self, key: Hashable, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor `load()` gives (on the CPU), on this device; cached under `key` when the budget allows.

        The key must name the value exactly (checkpoint identity, tensor, dtype, rows): a hit is
        returned without calling `load`."""
        if self.passthrough:  # nothing to move
            return load()
        if self.cache.budget:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        host = load()
        if not self.cache.admits(host.numel() * host.element_size()):
            return self._move(host)
        try:
            value = self._move(host)
            if value.data_ptr() == host.data_ptr():  # CPU, unstaged: the cache keeps its own copy
                value = empty_like_host(host, self.device).copy_(host)
            self.cache.put(key, value)
        except torch.OutOfMemoryError:  # the budget was optimistic: halve what worked, start again
            self.cache.budget = self.cache.used // 2
            self.cache.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            value = self._move(host)
        return value
