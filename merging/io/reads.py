"""The engine's reads of the pair's files during one apply: kept views, one change check per file.

A memory-mapped file truncated under us is SIGBUS on the next read of a page past its new end, which
no `except` catches, so a file must be checked (`Checkpoint.check_unchanged`, one stat) before it is
read. Checking before every tensor cost two stats per tensor; a file cannot change between two
tensors unless something runs between them, so `ApplyReads` checks each file once per apply and
again only after a merge method's own code ran (`method_ran`), before the next read of that file or
before a queued batch of writes reads it (`before_batch`). A truncation during one kernel's reads is
not caught (no portable way to); the engine's own kernels do not touch the files.
"""

from __future__ import annotations

import torch

from merging.io.checkpoint import Checkpoint


class ApplyReads:
    """Views of checkpoint tensors for one apply (or export), each file checked when it needs to be."""

    def __init__(self):
        self._checked: set[Checkpoint] = set()  # files checked since the last method code ran
        self._reading: set[Checkpoint] = set()  # files read since the last batch

    def start(self, *checked: Checkpoint | None) -> None:
        """A new apply whose caller just checked `checked` (others are checked on first read)."""
        self._checked = {c for c in checked if c is not None}
        self._reading = set()

    def new_batch(self) -> None:
        """A new batch of writes starts (a failed one's reads are not the next one's)."""
        self._reading = set()

    def method_ran(self) -> None:
        """A merge method's code ran: every file is checked again before its next read."""
        self._checked = set()

    def ready(self, *checkpoints: Checkpoint) -> bool:
        """Before views kept from earlier reads of `checkpoints` are read again: checks each one not checked
        since a method's code last ran (CheckpointError if it changed); True if any was checked (a file
        may have been mapped afresh). Marks them as read by the current batch."""
        stale = [c for c in checkpoints if c not in self._checked]
        for checkpoint in stale:
            checkpoint.check_unchanged()
            self._checked.add(checkpoint)
        self._reading.update(checkpoints)
        return bool(stale)

    def read(self, checkpoint: Checkpoint, key: str, rows: int | None = None) -> torch.Tensor:
        """The kept view of `key` (its first `rows` rows); CheckpointError if the file changed."""
        self.ready(checkpoint)
        tensor = checkpoint.get(key, check=False)
        return tensor if rows is None or rows == tensor.shape[0] else tensor[:rows]

    def before_batch(self) -> None:
        """Check the files the queued writes read that a method ran since (CheckpointError)."""
        for checkpoint in self._reading - self._checked:
            checkpoint.check_unchanged()
            self._checked.add(checkpoint)
        self._reading = set()
