"""Lazy, zero-copy access to the tensors of a safetensors checkpoint (one file or sharded).

The donor LLM and the VLM's own originals are read through this module. A safetensors file is an
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw
bytes. We memory-map each file and hand out `torch.frombuffer` views, so reading a tensor costs no
copy and no resident memory beyond the OS page cache — unlike `safe_open(...).get_tensor`, which
copies every tensor it returns. Every header is validated up front, so a corrupt file fails with a
clear `CheckpointError` at open time, not halfway through a merge.

Every dtype of the format is accepted in a header; a tensor whose dtype we cannot compute with is
refused only when it is read as a float (`float_problem`), by name. A mapped file truncated under us
would kill the process with SIGBUS on the next read, so reads first check that the file still has the
size and identity (st_size, st_ino, st_mtime_ns, st_dev) it had at open (the engine: once per file
per apply, merging/io/reads.py); a changed file is re-opened if it holds the same checkpoint (a
restored copy), refused with a CheckpointError otherwise. Views are made once and kept. Block-scaled
FP8 weights are dequantized on read (`merging.io.quantization`); other quantizations are recorded in
`quantization` for the caller to refuse.
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
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from merging.errors import CheckpointError
from merging.io.quantization import (SCALE_INV_SUFFIX, Quantization, block_scale_shape, dequantize_fp8_blocks,
    detect_quantization, read_quantization_config)

# Bits per element of every dtype of the format (safetensors 0.8's `Dtype` enum, 22 codes).
DTYPE_BITS: dict[str, int] = {
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# The codes torch has an element type for (F4/F6 are sub-byte: no per-element torch dtype).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "C64": torch.complex64,
}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
# What we merge: real floats, and plain FP8 (its values are the weights; scaled FP8 is dequantized first).
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"})
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors spec's own limit
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class _TensorEntry:
    __slots__ = ("file", "code", "dtype", "shape", "begin", "end")

    def __init__(self, file: "_SafetensorsFile", code: str, shape: tuple[int, ...], begin: int, end: int):
        self.file, self.code, self.shape, self.begin, self.end = file, code, shape, begin, end
        self.dtype = SAFETENSORS_DTYPES.get(code)  # None: no torch element type (F4, F6_*)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_ino, st.st_mtime_ns, st.st_dev


class _SafetensorsFile:
    """One memory-mapped .safetensors file with a validated header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            stat = path.stat()
            size, self.identity = stat.st_size, _identity(stat)
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
        self._views: dict[str, torch.Tensor] = {}  # entry name → its view of the current mapping
        self.content = self._content_hash()  # what a re-opened file must match

    def _entry(self, name: str, info: object) -> _TensorEntry:
        try:
            code = info["dtype"]
            bits = DTYPE_BITS[code]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry "
                                  f"{info!r}") from exc
        nbits = math.prod(shape) * bits  # sub-byte dtypes pack whole bytes (the format refuses the rest)
        if min(shape, default=0) < 0 or nbits % 8 or end - begin != nbits // 8 or begin < 0 \
                or self.data_start + end > self.size:
            raise CheckpointError(f"{self.path}: tensor {name!r} ({code}{list(shape)}) "
                                  f"claims bytes {begin}..{end} but the file has "
                                  f"{self.size - self.data_start} data bytes (truncated or corrupt)")
        return _TensorEntry(self, code, shape, begin, end)

    def _content_hash(self) -> bytes:
        hasher = hashlib.sha256()
        self.digest(hasher)
        return hasher.digest()

    def check(self) -> None:
        """Refuse to read a file that changed since it was opened; re-map one that was restored.

        Reading a mapped page past a truncated end is SIGBUS, which no `except` catches, so the file's
        identity is compared before reads (one stat); a restored copy (same header and sampled bytes) is mapped afresh.
        A truncation between this check and the read itself is not caught (no portable way to).
        """
        try:
            now = _identity(os.stat(self.path))
        except OSError as exc:
            raise CheckpointError(f"{self.path}: gone since it was opened ({exc.strerror}); restore it "
                                  f"or load the model again") from exc
        if now == self.identity:
            return
        change = f"size {self.size} → {now[0]} bytes" if now[0] != self.size else "modified or replaced"
        try:
            fresh = _SafetensorsFile(self.path)
        except CheckpointError:
            fresh = None
        if fresh is None or fresh.header_bytes != self.header_bytes or fresh.content != self.content:
            raise CheckpointError(f"{self.path}: changed on disk since it was opened ({change}); restore it "
                                  f"or load the model again")
        # the old map may still back live views: drop it, never close it under them
        self.mmap, self.identity, self.size = fresh.mmap, fresh.identity, fresh.size
        self._views = {}

    def view(self, name: str, entry: _TensorEntry, check: bool = True) -> torch.Tensor:
        """A zero-copy CPU tensor over `entry`'s bytes in the memory map (shape and dtype from the header),
        kept once made (a fresh one costs more than a small tensor's merge). Checks the file first
        (`check`) if `check`; CheckpointError for a dtype torch has no element type for."""
        if check:
            self.check()
        if name in self._views:
            return self._views[name]
        if entry.dtype is None:
            raise CheckpointError(f"{self.path}: tensor of dtype {entry.code} {list(entry.shape)} cannot be "
                                  f"read (no torch element type)")
        count = math.prod(entry.shape)
        with warnings.catch_warnings():  # the mapping is read-only on purpose: a stray write faults
            warnings.simplefilter("ignore", UserWarning)
            flat = (torch.frombuffer(self.mmap, dtype=entry.dtype, count=count, offset=self.data_start + entry.begin)
                    if count else torch.empty(0, dtype=entry.dtype))
        self._views[name] = flat.view(entry.shape)
        return self._views[name]

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
    `model.safetensors.index.json`, or a path to a single `.safetensors` file. `quantization` says how
    the checkpoint is quantized (None: it is not); block-scaled FP8 weights read dequantized (float32).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index_only: list[str] = []  # names a (stale) index lists that no shard holds
        files = self._find_files(self.path)
        self._files = [_SafetensorsFile(f) for f in files]
        self._entries: dict[str, _TensorEntry] = {}
        for file in self._files:
            for name, entry in file.entries.items():
                if name in self._entries:
                    raise CheckpointError(f"{self.path}: tensor {name!r} appears in two shards "
                                          f"({self._entries[name].file.path.name}, {file.path.name})")
                self._entries[name] = entry
        self.index_only = [n for n in self.index_only if n not in self._entries]
        self._fingerprint: str | None = None
        folder = self.path if self.path.is_dir() else self.path.parent
        self.quantization: Quantization | None = detect_quantization(read_quantization_config(folder), self.keys())

    def _find_files(self, path: Path) -> list[Path]:
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
            self.index_only = list(weight_map)
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

    def dtype_code(self, name: str) -> str:
        """The safetensors dtype code of tensor `name` as stored (e.g. "BF16", "F8_E4M3", "U16")."""
        return self._entry(name).code

    def dtype(self, name: str) -> torch.dtype:
        """The torch dtype `get(name)` returns (float32 for dequantized FP8); CheckpointError if absent
        or if torch has no element type for it (F4, F6_*)."""
        entry = self._entry(name)
        if self._scale_key(name) is not None:
            return torch.float32
        if entry.dtype is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is {entry.code}, which torch cannot hold")
        return entry.dtype

    def nbytes(self, name: str) -> int:
        """The size in bytes of tensor `name`'s stored data (its FP8 scale included); CheckpointError if absent."""
        entry = self._entry(name)
        scale = self._scale_key(name)
        return entry.end - entry.begin + (self.nbytes(scale) if scale else 0)

    def float_problem(self, name: str) -> str | None:
        """Why tensor `name` cannot be merged as a float (its dtype, named), or None when it can."""
        entry = self._entry(name)
        fp8_checkpoint = self.quantization is not None and self.quantization.dequantized
        scale = self._scale_key(name)
        if scale is not None:  # checked here from the headers, so a bad scale fails at load, not mid-merge
            expected = block_scale_shape(entry.shape, self.quantization.block)
            if expected != self.shape(scale):
                return (f"tensor {name!r} (F8_E4M3 {list(entry.shape)}) has a {list(self.shape(scale))} block scale "
                        f"where weight_block_size {list(self.quantization.block)} needs {list(expected or [])}")
            return None
        if entry.code not in FLOAT_CODES:
            return f"tensor {name!r} is {entry.code}, not a float dtype Mergescope can merge"
        if fp8_checkpoint and entry.code.startswith("F8_"):
            return f"tensor {name!r} is {entry.code} without its {name + SCALE_INV_SUFFIX!r} block scale"
        return None

    def get(self, name: str, check: bool = True) -> torch.Tensor:
        """A zero-copy CPU view of tensor `name` (read-only by convention: never write to it); a block-
        scaled FP8 weight is returned dequantized (a new float32 tensor). CheckpointError if the file
        changed since it was opened; `check=False` skips that stat (the caller checked: merging/io/reads.py)."""
        entry = self._entry(name)
        scale = self._scale_key(name)
        raw = entry.file.view(name, entry, check)
        return raw if scale is None else dequantize_fp8_blocks(raw, self.get(scale, check), self.quantization.block)

    def dtype_counts(self) -> dict[str, int]:
        """How many tensors of each stored dtype code the checkpoint holds, e.g. {"BF16": 338, "U16": 1}."""
        return dict(sorted(Counter(entry.code for entry in self._entries.values()).items()))

    def check_unchanged(self) -> None:
        """CheckpointError if any file changed on disk since it was opened (see `_SafetensorsFile.check`)."""
        for file in self._files:
            file.check()

    def mapping(self) -> tuple[tuple[int, int, int, int], ...]:
        """Each file's identity as mapped now: it changes when `check_unchanged` maps a restored file afresh."""
        return tuple(f.identity for f in self._files)

    def _scale_key(self, name: str) -> str | None:
        """The block-scale tensor of an FP8 weight in an FP8-quantized checkpoint, else None."""
        if self.quantization is None or not self.quantization.dequantized:
            return None
        scale = name + SCALE_INV_SUFFIX
        return scale if scale in self._entries and self._entries[name].code == "F8_E4M3" else None

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

    def write(f) -> None:
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

    replace_file(path, write)
    return 8 + len(raw) + offset


def replace_file(path: Path, write: Callable[[Any], None]) -> None:
    """Write `path` through `write(binary file)` without ever following a link planted at `path`.

    The bytes go to a fresh temporary file in the same folder (mkstemp: O_EXCL, never an existing
    file), which then replaces `path` with os.replace: a symbolic link at `path` is replaced itself,
    its target untouched, and a failed write leaves no partial file under the final name. Raises
    OSError (a full disk, a read-only folder) after removing the temporary file.
    """
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def write_text_file(path: Path, text: str) -> None:
    """`text` (UTF-8) to `path` as `replace_file` writes: never through a link planted at `path`."""
    replace_file(path, lambda f: f.write(text.encode()))
