"""A least-recently-used cache of merge inputs (VLM originals, donor and base tensors) on the device.

On a GPU every write needs the VLM's original and the donor tensor on the device; without a cache
both cross PCIe again on each apply (a 7 B attention-only plan: 3.3 GB per apply). With a budget,
the tensors of recent plans stay in device memory and a re-apply reads them at device bandwidth.

Entries are exact copies of what the host would have sent (same dtype, same rows), so weights are
bit-identical with and without the cache. The budget is a hard limit on the bytes held; a tensor
larger than the whole budget is never cached; inserting evicts least-recently-used entries first.
Works on any device (on the CPU it holds plain copies: used by tests, or to keep originals in RAM).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

import torch

from merging.errors import MergescopeError

DEFAULT_FREE_FRACTION = 0.25  # of the device's free memory after the model is loaded (CUDA only)


def default_budget(device: torch.device | str) -> int:
    """The default budget: a quarter of the free memory on a CUDA device (room stays for generation's
    KV cache and activations), 0 elsewhere (on the CPU the originals are already in the page cache)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(free * DEFAULT_FREE_FRACTION)


def budget_from_gb(gb: float | None) -> int | None:
    """The `--device-cache-gb` flag as bytes (10⁹ per GB); None stays None (the default budget)."""
    if gb is None:
        return None
    if gb < 0:
        raise MergescopeError(f"--device-cache-gb must be ≥ 0, got {gb}")
    return int(gb * 1e9)


DEVICE_CACHE_HELP = ("device memory (GB) for the LRU cache of VLM originals and donor tensors that makes "
                     "re-applies fast on a GPU; default: a quarter of the free memory on CUDA, 0 on the CPU; "
                     "0 turns it off")


class DeviceCache:
    """Key → tensor on `device`, at most `budget` bytes in all, LRU eviction."""

    def __init__(self, budget: int, device: torch.device | str):
        if budget < 0:
            raise ValueError(f"device cache budget must be ≥ 0 bytes, got {budget}")
        self.budget = int(budget)
        self.device = torch.device(device)
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.used = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def nbytes(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The cached tensor (marked most recently used), or None."""
        tensor = self._entries.get(key)
        if tensor is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return tensor

    def admits(self, nbytes: int) -> bool:
        """Whether a tensor of `nbytes` could be cached at all (not larger than the whole budget)."""
        return 0 < nbytes <= self.budget

    def put(self, key: Hashable, tensor: torch.Tensor) -> bool:
        """Keep `tensor` (already on the device, owned by the cache: never written afterwards) under
        `key`, evicting the least recently used entries to make room. False if it cannot fit."""
        size = self.nbytes(tensor)
        if not self.admits(size):
            return False
        if key in self._entries:
            self.used -= self.nbytes(self._entries.pop(key))
        while self.used + size > self.budget:
            _, old = self._entries.popitem(last=False)
            self.used -= self.nbytes(old)
            self.evictions += 1
        self._entries[key] = tensor
        self.used += size
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def stats(self) -> dict[str, int]:
        """Budget, bytes held, entries, hits, misses, evictions."""
        return {"budget": self.budget, "used": self.used, "entries": len(self._entries),
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
