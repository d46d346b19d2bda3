"""Lazy, zero-copy access to the tensors of a safetensors checkpoint (one file or sharded).

The donor LLM and the VLM's own originals are read through this module. A safetensors file is an
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw
bytes. We memory-map each file and hand out `torch.frombuffer` views, so reading a tensor costs no
copy and no resident memory beyond the OS page cache — unlike `safe_open(...).get_tensor`, which
copies every tensor it returns. Every header is validated up front, so a corrupt file fails with a
clear `CheckpointError` at open time, not halfway through a merge.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {  # the format's dtype codes
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors spec's own limit
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class _TensorEntry:
    __slots__ = ("file", "dtype", "shape", "begin", "end")

    def __init__(self, file: "_SafetensorsFile", dtype: torch.dtype, shape: tuple[int, ...],
                 begin: int, end: int):
        self.file, self.dtype, self.shape, self.begin, self.end = file, dtype, shape, begin, end


class _SafetensorsFile:
    """One memory-mapped .safetensors file with a validated header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise CheckpointError(f"{path}: file is too short to be safetensors ({size} bytes)")
                (header_len,) = struct.unpack("<Q", prefix)
                if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
                    raise CheckpointError(f"{path}: header length {header_len} is impossible for a "
                                          f"{size}-byte file (corrupt or not safetensors)")
                self.header_bytes = f.read(header_len)
                self.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + header_len else None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
        try:
            header = json.loads(self.header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: header is not a JSON object")
        self.size, self.data_start = size, 8 + header_len
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = {name: self._entry(name, info) for name, info in header.items()}

    def _entry(self, name: str, info: object) -> _TensorEntry:
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry "
                                  f"{info!r}") from exc
        nbytes = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0 \
                or self.data_start + end > self.size:
            raise CheckpointError(f"{self.path}: tensor {name!r} ({info['dtype']}{list(shape)}) "
                                  f"claims bytes {begin}..{end} but the file has "
                                  f"{self.size - self.data_start} data bytes (truncated or corrupt)")
        return _TensorEntry(self, dtype, shape, begin, end)

    def view(self, entry: _TensorEntry) -> torch.Tensor:
        """A zero-copy CPU tensor over `entry`'s bytes in the memory map (shape and dtype from the header)."""
        count = math.prod(entry.shape)
        if count == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        with warnings.catch_warnings():  # the mapping is read-only on purpose: a stray write faults
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self.mmap, dtype=entry.dtype, count=count,
                                    offset=self.data_start + entry.begin)
        return flat.view(entry.shape)

    def digest(self, hasher: "hashlib._Hash", samples: int = 64, block: int = 65536) -> None:
        """Feed the header, the size and `samples` evenly spaced data blocks into `hasher`."""
        hasher.update(self.path.name.encode())
        hasher.update(struct.pack("<Q", self.size))
        hasher.update(self.header_bytes)
        data_len = self.size - self.data_start
        if self.mmap is None:
            return
        if data_len <= samples * block:
            hasher.update(self.mmap[self.data_start:])
            return
        stride = (data_len - block) // (samples - 1)
        for i in range(samples):
            start = self.data_start + i * stride
            hasher.update(self.mmap[start:start + block])


class Checkpoint:
    """All safetensors tensors of one model folder, opened lazily.

    Accepts a folder holding `model.safetensors`, or a sharded folder with
    `model.safetensors.index.json`, or a path to a single `.safetensors` file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files = self._find_files(self.path)
        self._files = [_SafetensorsFile(f) for f in files]
        self._entries: dict[str, _TensorEntry] = {}
        for file in self._files:
            for name, entry in file.entries.items():
                if name in self._entries:
                    raise CheckpointError(f"{self.path}: tensor {name!r} appears in two shards "
                                          f"({self._entries[name].file.path.name}, {file.path.name})")
                self._entries[name] = entry
        self._fingerprint: str | None = None

    @staticmethod
    def _find_files(path: Path) -> list[Path]:
        if path.is_file():
            if path.suffix != ".safetensors":
                raise CheckpointError(f"{path}: only .safetensors files are loaded (no pickles)")
            return [path]
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such file or folder")
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"{index}: shards listed but missing: {missing}")
            return [path / s for s in shards]
        if (path / SINGLE_NAME).is_file():
            return [path / SINGLE_NAME]
        found = sorted(path.glob("*.safetensors"))
        if found:
            return found
        raise CheckpointError(f"{path}: no safetensors weights found (only safetensors are loaded; "
                              f"pickled .bin checkpoints are refused)")

    def keys(self) -> list[str]:
        """Every tensor name in the checkpoint (all shards), in header order."""
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name` from the header (no data read); CheckpointError if absent."""
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        """The torch dtype of tensor `name` from the header; CheckpointError if absent."""
        return self._entry(name).dtype

    def nbytes(self, name: str) -> int:
        """The size in bytes of tensor `name`'s data; CheckpointError if absent."""
        entry = self._entry(name)
        return entry.end - entry.begin

    def get(self, name: str) -> torch.Tensor:
        """A zero-copy CPU view of tensor `name` (read-only by convention: never write to it)."""
        entry = self._entry(name)
        return entry.file.view(entry)

    def _entry(self, name: str) -> _TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None

    @property
    def metadata(self) -> dict[str, str]:
        """The `__metadata__` string map of every shard, merged."""
        return {k: v for f in self._files for k, v in f.metadata.items()}

    def fingerprint(self) -> str:
        """A short hash that changes when the weights change.

        Hashes every file's name, size and header plus 64 evenly spaced 64 KiB blocks of its data
        (the whole data for small files): cheap at 7B scale (≤ 4 MiB read per shard), and any
        retraining or re-merge changes it. A change confined to bytes between two sampled blocks of
        a large file could go unnoticed; in-place edits of that kind are not a workflow we serve.
        """
        if self._fingerprint is None:
            hasher = hashlib.sha256()
            for file in self._files:
                file.digest(hasher)
            self._fingerprint = hasher.hexdigest()[:16]
        return self._fingerprint


# -- writing: one tensor at a time ------------------------------------------------------------------------
def write_safetensors(path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                      produce: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file tensor by tensor: the header from `specs` (name, dtype, shape), then
    each tensor's bytes as `produce(name)` returns it (on the CPU). Returns the file's size."""
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_CODES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8-byte alignment
    # A fresh temporary file in the target folder (O_EXCL: never opens a planted link), renamed over
    # `path` at the end: os.replace swaps the directory entry, so a link at `path` is replaced, never
    # followed, and a failed write leaves no partial file under the final name.
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, dtype, shape in specs:
                tensor = produce(name)
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape) or tensor.device.type != "cpu":
                    raise CheckpointError(f"{name}: produced {tensor.dtype}{list(tensor.shape)} on "
                                          f"{tensor.device}, expected {dtype}{list(shape)} on cpu")
                if tensor.numel():
                    f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                del tensor
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return 8 + len(raw) + offset
