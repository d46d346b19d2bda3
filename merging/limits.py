"""Bounded parsing and bounded messages for data a user sends (plans, grids, images).

A public demo must not let a tiny request cost unbounded time or memory. Three rules, enforced here:

- text is measured before it is parsed (`MAX_DOCUMENT_BYTES`), and YAML is parsed by a loader that
  refuses aliases (a 413-byte document of nested aliases expands into billions of nodes) and counts
  nodes and depth as it composes, so nothing large is ever built;
- the parsed tree is walked once, iteratively, to refuse what the parsers allow but the code after
  them does not expect: non-string mapping keys, very long lists, integers too long to be a setting;
- every message that shows user data uses `brief()`, which never formats more than a few hundred
  characters, however large or deep the value is (formatting first and cutting later is what froze
  the server).

Images are read (header first) by `merging.io.images.read_image`.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

import yaml
from PIL import Image

from merging.errors import MergescopeError

MAX_DOCUMENT_BYTES = 64 * 1024   # a plan or grid; real ones are a few hundred bytes
MAX_NODES = 20_000               # scalars + lists + mappings in one document
MAX_DEPTH = 32                   # a plan is 5 levels deep
MAX_LIST = 4096                  # custom curves: one value per layer (models have ≤ a few hundred)
MAX_RULES = 256
MAX_KEY_CHARS = 200              # names of settings and methods in a grid are shown in messages
MAX_INT_DIGITS = 30              # a seed or layer index, never a 400-digit number
MAX_IMAGE_PIXELS = 4096 * 4096   # same limit as merging.run.generate: refuse before decoding

# PIL's own guard: beyond this it raises DecompressionBombError in Image.open (and warns above half
# of it). Set at the project's limit so that no code path that opens an image can decode a bomb.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 4, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = 60, 60, 40


def brief(value: object, limit: int = 120) -> str:
    """A repr of `value` of at most `limit` characters, computed without formatting the whole value.

    reprlib stops at `maxlevel` levels and a few items per container, so the work is bounded by
    those limits, not by the value's size; the result is cut to `limit` as a last resort.
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that fails (e.g. an int beyond Python's digit limit) must not hide the error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LimitError(MergescopeError):
    """User data beyond one of this module's limits (size, aliases, depth, count, shape)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and stops composing past MAX_NODES nodes or MAX_DEPTH levels."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not accepted here; "
                                              "write the value out in full", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES} values",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_size(text: str, what: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
    """Raises LimitError if `text` is over `max_bytes` (UTF-8), before anything is parsed."""
    if not isinstance(text, str):
        raise LimitError(f"{what}: expected text, got {type(text).__name__}")
    # len(str) ≤ bytes ≤ 4·len(str): decide cheaply when we can, encode only in between
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode("utf-8", "replace")) > max_bytes):
        raise LimitError(f"{what} is {len(text.encode('utf-8', 'replace')) // 1024} KiB; the limit is "
                         f"{max_bytes // 1024} KiB")


def parse_document(text: str, what: str, json_first: bool = False) -> Any:
    """Parse a user's YAML (or JSON) document within this module's limits.

    `json_first`: try JSON before YAML (PyYAML reads YAML 1.1, where 1e-30 is a string).
    Raises LimitError (size, aliases, depth, node count, shape) or MergescopeError (syntax), each one line.
    """
    check_size(text, what)
    data: Any = None
    parsed = False
    if json_first:
        try:
            data, parsed = json.loads(text), True
        except RecursionError:
            raise LimitError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
        except ValueError:  # not JSON (or an int beyond Python's digit limit): YAML decides
            pass
    if not parsed:
        try:
            data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 — a SafeLoader subclass
        except yaml.composer.ComposerError as exc:
            raise LimitError(f"{what}: {exc.problem} (line {exc.problem_mark.line + 1})") from None
        except yaml.YAMLError as exc:
            raise MergescopeError(f"{what} is not valid YAML/JSON: {_one_line(exc)}") from None
        except ValueError:  # a 5000-digit integer, which int() refuses (Python's digit limit)
            raise LimitError(f"{what}: a number too long to read; use one with at most {MAX_INT_DIGITS} "
                             f"digits") from None
        except RecursionError:
            raise LimitError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    check_tree(data, what)
    return data


def check_tree(data: Any, what: str) -> None:
    """Walk `data` once (iteratively) and refuse what no plan or grid has.

    Raises LimitError for: more than MAX_NODES values or MAX_DEPTH levels, a list longer than MAX_LIST,
    a mapping key that is not a string (or is over MAX_KEY_CHARS), an integer with more than MAX_INT_DIGITS digits.
    """
    stack: list[tuple[Any, str, int]] = [(data, what, 0)]
    nodes = 0
    while stack:
        value, where, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise LimitError(f"{what}: more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise LimitError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            if len(value) > MAX_LIST:
                raise LimitError(f"{where}: {len(value)} keys; the limit is {MAX_LIST}")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise LimitError(f"{where}: keys must be text, got {brief(key, 40)} "
                                     f"({type(key).__name__}); quote it")
                if len(key) > MAX_KEY_CHARS:
                    raise LimitError(f"{where}: a key of {len(key)} characters; the limit is {MAX_KEY_CHARS}")
                stack.append((item, f"{where}.{key[:40]}", depth + 1))
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST:
                raise LimitError(f"{where}: a list of {len(value)} items; the limit is {MAX_LIST}")
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_DIGITS * 3.33:  # log2(10) bits per digit, no str() of a huge int
                raise LimitError(f"{where}: a number with more than {MAX_INT_DIGITS} digits; use a smaller one")


def bounded_int(value: object, what: str, low: int, high: int) -> int:
    """`value` as an int in [low, high] (a float or numeric text is accepted if integral).

    Raises LimitError with one line for anything else (text, inf, NaN, a list, out of range).
    """
    if isinstance(value, bool):
        raise LimitError(f"{what}: expected a whole number in [{low}, {high}], got {brief(value, 40)}")
    if isinstance(value, str):
        value = value.strip()[:40]
    try:
        number = float(value) if not isinstance(value, int) else value
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise LimitError(f"{what}: expected a whole number in [{low}, {high}], got {brief(value, 40)}") from None
    if not low <= number <= high:
        raise LimitError(f"{what}: {brief(number, 40)} is outside [{low}, {high}]")
    return number


def byte_size(n: int | float) -> str:
    """`n` bytes as a short human size in binary units: "17.8 GiB", "42.0 MiB", "512 B" — the unit that
    keeps one to three digits before the point, so a tiny model never reads "0.0 GiB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def as_text(value: object, what: str) -> str:
    """`value` if it is text (None: empty); raises LimitError naming `what` for anything else."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LimitError(f"{what} must be text, got {type(value).__name__}")
    return value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
