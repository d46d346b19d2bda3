"""AnswerCache: every evaluated (models, plan, image, question, settings) remembered across restarts.

Backed by `diskcache` with `SafeJSONDisk` (cache/disk.py), so keys and values are JSON on disk — never
pickles, which would run code on load — and no row can point at a file outside the cache folder. The
key is the SHA-256 of the configuration's canonical JSON; the entry
stores the configuration itself beside the result, so the history view can list what was asked and
re-open its plan. An entry that cannot be decoded, or that is not one of ours, reads as a miss (and
is dropped), never as a crash. The cache is best-effort: a write that fails (full disk, bad page) is
a logged warning, never a failed answer; a cache.db that cannot be opened at start is moved aside
(`<dir>.corrupt-<time>`) and a fresh cache is built, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import diskcache

from .disk import SafeJSONDisk

log = logging.getLogger("mergescope.cache")
SCHEMA = "mergescope.answer.v1"
DEFAULT_SIZE_LIMIT = 1 << 30  # 1 GiB; diskcache evicts least-recently-stored entries beyond it
_DECODE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, zlib.error, TypeError, ValueError, sqlite3.Error)


def config_key(config: dict[str, Any]) -> str:
    """Stable key of a configuration: the SHA-256 of its canonical JSON (sorted keys, no NaN)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AnswerCache:
    def __init__(self, directory: str | Path, size_limit: int = DEFAULT_SIZE_LIMIT):
        """Open (or create) the cache in `directory`; an unreadable one is moved aside and rebuilt.

        Raises OSError only if the folder itself cannot be created or moved (a read-only disk).
        """
        self.directory = Path(directory)
        self._size_limit = size_limit
        try:
            self._cache = self._open()
        except sqlite3.DatabaseError as exc:  # not a database, malformed pages: the data is lost anyway
            aside = self.directory.with_name(f"{self.directory.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
                                             f"-{os.getpid()}")
            os.replace(self.directory, aside)
            log.warning("cache: %s is unreadable (%s); moved it to %s and started an empty cache",
                        self.directory / "cache.db", " ".join(str(exc).split())[:120], aside)
            self._cache = self._open()

    def _open(self) -> diskcache.Cache:
        cache = diskcache.Cache(str(self.directory), disk=SafeJSONDisk, size_limit=self._size_limit,
                                eviction_policy="least-recently-stored")
        try:
            # diskcache reads only its settings on open; a quick check finds bad pages now, not mid-answer
            (verdict,) = cache._sql("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
        except sqlite3.DatabaseError:
            cache.close()
            raise
        return cache

    def get(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result for `config`, or None on a miss (including unreadable or foreign entries)."""
        key = config_key(config)
        try:
            entry = self._cache.get(key)
        except _DECODE_ERRORS + (OSError,):
            entry = None
            self._discard(key)
        if entry is None:
            return None
        if not _is_ours(entry) or entry["config"] != json.loads(json.dumps(config)):
            self._discard(key)
            return None
        return entry["result"]

    def put(self, config: dict[str, Any], result: dict[str, Any]) -> str:
        """Store `result` (JSON-serialisable) for `config`; returns the key.

        Best-effort: a failed write (full disk, bad page, read-only folder) logs one warning line and
        returns; the answer it was meant to remember has been computed and is still served.
        """
        key = config_key(config)
        try:
            self._cache.set(key, {"schema": SCHEMA, "config": config, "result": result, "created_at": time.time()})
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache: could not store an answer (%s); answering without caching it",
                        " ".join(str(exc).split())[:160])
        return key

    def entry(self, key: str) -> dict[str, Any] | None:
        """The readable entry stored under `key` ({key, config, result, created_at}), or None."""
        try:
            entry = self._cache.get(key)
        except _DECODE_ERRORS + (OSError,):
            return None
        return {"key": key, **{k: entry[k] for k in ("config", "result", "created_at")}} if _is_ours(entry) else None

    def entries(self, limit: int | None = None,
                keep: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Readable entries, newest first: {key, config, result, created_at}; at most `limit` of them
        (the newest stored) among those `keep(entry)` accepts (all without `keep`): the filter runs
        before the limit, so many entries it drops never push out the ones it keeps. An unreadable cache
        lists nothing (with a warning), never raises."""
        query = "SELECT key, raw FROM Cache ORDER BY store_time DESC"
        if limit is not None and keep is None:
            query += f" LIMIT {int(limit)}"
        try:
            rows = self._cache._sql(query).fetchall()  # newest stored first, without reading every value
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache: cannot list entries (%s)", " ".join(str(exc).split())[:160])
            return []
        found = []
        for db_key, raw in rows:
            try:
                key = self._cache.disk.get(db_key, raw)
            except _DECODE_ERRORS:  # a hand-edited row (e.g. a pickled key, refused by SafeJSONDisk)
                continue
            entry = self.entry(key) if isinstance(key, str) else None
            if entry is not None and (keep is None or keep(entry)):
                found.append(entry)
                if limit is not None and len(found) >= limit:
                    break
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
        except _DECODE_ERRORS + (OSError,):
            pass


def _is_ours(entry: Any) -> bool:
    return (isinstance(entry, dict) and entry.get("schema") == SCHEMA and isinstance(entry.get("config"), dict)
            and isinstance(entry.get("result"), dict) and isinstance(entry.get("created_at"), (int, float)))
