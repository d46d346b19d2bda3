"""SafeJSONDisk: the diskcache serializer the answers cache uses, and what it refuses to read.

diskcache's `JSONDisk` writes JSON, but it inherits `Disk`'s readers, which trust the database: a
row whose `raw` flag is 0 is unpickled on read (running whatever the pickle says), and a row's file
name is joined to the cache folder unchecked, so a hand-edited row can make a read open any file and
`cache clear` delete any file the process may delete. The cache folder is data, not code: this class
reads only what `JSONDisk` writes — raw keys, zlib-compressed JSON values kept in the row or in a
file inside the folder — and refuses everything else with a ValueError (a miss to AnswerCache).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import diskcache
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW, MODE_TEXT, UNKNOWN

log = logging.getLogger("mergescope.cache")


class SafeJSONDisk(diskcache.JSONDisk):
    """JSONDisk without pickles or paths outside the cache folder (see the module docstring)."""

    def _inside(self, filename: str | None) -> str:
        """The full path of `filename` if it resolves inside the cache folder (symlinks followed);
        raises ValueError otherwise."""
        if not isinstance(filename, str) or not filename:
            raise ValueError("cache row names no file")
        root = os.path.realpath(self._directory)
        full = os.path.realpath(os.path.join(root, filename))
        if os.path.commonpath([root, full]) != root or full == root:
            raise ValueError(f"cache row names a file outside the cache folder: {filename[:80]!r}")
        return full

    def put(self, key: Any) -> tuple[Any, bool]:
        """Keys are JSON (AnswerCache uses hex strings), stored raw; raises TypeError for others."""
        if not isinstance(key, (str, int, float)) or isinstance(key, bool):
            raise TypeError(f"cache keys are strings or numbers, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        """Raises ValueError for a pickled key (raw = 0), which JSONDisk never writes."""
        if not raw:
            raise ValueError("cache row holds a pickled key; refused")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        """JSON values only; file-like values (`read=True`) are refused with TypeError."""
        if read:
            raise TypeError("the answers cache stores JSON values, not files")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        """Raises ValueError for a pickle, a file handle request, an unknown mode, or a file outside the folder."""
        if read:
            raise ValueError("the answers cache hands out values, not files")
        if mode == MODE_PICKLE:
            raise ValueError("cache row holds a pickle; refused")
        if mode in (MODE_BINARY, MODE_TEXT):
            self._inside(filename)
        elif mode != MODE_RAW:
            raise ValueError(f"cache row has an unknown mode {mode!r}")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: str) -> None:
        """Delete a value file of this cache; a path outside the folder is left alone (with a warning)."""
        try:
            self._inside(file_path)
        except ValueError as exc:
            log.warning("cache: not removing %s", exc)
            return
        super().remove(file_path)
