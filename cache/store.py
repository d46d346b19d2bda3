"""AnswerCache: every evaluated (models, plan, image, question, settings) remembered across restarts.

Backed by `diskcache` with `JSONDisk`, so keys and values are JSON on disk — never pickles, which
would run code on load. The key is the SHA-256 of the configuration's canonical JSON; the entry
stores the configuration itself beside the result, so the history view can list what was asked and
re-open its plan. An entry that cannot be decoded, or that is not one of ours, reads as a miss (and
is dropped), never as a crash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import diskcache

SCHEMA = "mergescope.answer.v1"
DEFAULT_SIZE_LIMIT = 1 << 30  # 1 GiB; diskcache evicts least-recently-stored entries beyond it
_DECODE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, zlib.error, TypeError, ValueError, sqlite3.Error)


def config_key(config: dict[str, Any]) -> str:
    """Stable key of a configuration: the SHA-256 of its canonical JSON (sorted keys, no NaN)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AnswerCache:
    def __init__(self, directory: str | Path, size_limit: int = DEFAULT_SIZE_LIMIT):
        self.directory = Path(directory)
        self._cache = diskcache.Cache(str(self.directory), disk=diskcache.JSONDisk, size_limit=size_limit,
                                      eviction_policy="least-recently-stored")

    def get(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result for `config`, or None on a miss (including unreadable or foreign entries)."""
        key = config_key(config)
        try:
            entry = self._cache.get(key)
        except _DECODE_ERRORS:
            entry = None
            self._discard(key)
        if entry is None:
            return None
        if not _is_ours(entry) or entry["config"] != json.loads(json.dumps(config)):
            self._discard(key)
            return None
        return entry["result"]

    def put(self, config: dict[str, Any], result: dict[str, Any]) -> str:
        """Store `result` (JSON-serialisable) for `config`; returns the key."""
        key = config_key(config)
        self._cache.set(key, {"schema": SCHEMA, "config": config, "result": result, "created_at": time.time()})
        return key

    def entries(self) -> list[dict[str, Any]]:
        """All readable entries, newest first: {key, config, result, created_at}."""
        found = []
        for key in list(self._cache.iterkeys()):
            try:
                entry = self._cache.get(key)
            except _DECODE_ERRORS:
                continue
            if _is_ours(entry):
                found.append({"key": key, **{k: entry[k] for k in ("config", "result", "created_at")}})
        return sorted(found, key=lambda e: e["created_at"], reverse=True)

    def stats(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "entries": len(self._cache), "bytes": self._cache.volume(),
                "size_limit": self._cache.size_limit}

    def clear(self) -> int:
        return self._cache.clear()

    def close(self) -> None:
        self._cache.close()

    def _discard(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except _DECODE_ERRORS:
            pass


def _is_ours(entry: Any) -> bool:
    return (isinstance(entry, dict) and entry.get("schema") == SCHEMA and isinstance(entry.get("config"), dict)
            and isinstance(entry.get("result"), dict) and isinstance(entry.get("created_at"), (int, float)))
