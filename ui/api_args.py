"""Typed, bounded arguments of the scripting API: one checker per kind of argument, for every endpoint.

A script can send any JSON value in any argument (a list where text goes, a number where a list
goes, a 60 KB string, ten levels of nesting). Each checker takes whatever came and returns the value
the handler needs, or raises MergescopeError with one line naming the argument and what it takes;
`endpoint` turns that into the one-line `gr.Error` the caller sees. A new endpoint declares its
arguments with these checkers and gets the same behaviour:

    def api_thing(explorer, plan: str | dict, question: str, image: ImageArg = None, top_k: int = 10,
                  request: gr.Request = None):
        plan, question = plan_arg(plan), question_arg(question)
        ...

Kinds: a plan (YAML/JSON text, or the mapping itself), a question, an image (None, a path this app
uploaded, or the FileData dict `gradio_client.handle_file` sends), a whole number in a range, and a
list of numbers (a real list, a single number, or the list as JSON text).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from PIL import Image

from merging.errors import MergescopeError
from merging.run.generate import check_question
from merging.io.images import read_image
from merging.limits import LimitError, as_text, bounded_int, brief, check_size
from merging.plan.merge_plan import MergePlan

from .guard import upload_folder

ImageArg = dict | str | None   # the annotation an image argument carries (gr.api reads it for the docs)


def one_line(message: str, limit: int = 300) -> str:
    """`message` on one line of at most `limit` characters (a gr.Error is shown as a single line)."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def endpoint(fn: Callable) -> Callable:
    """`fn` with every MergescopeError it raises turned into a one-line gr.Error (the caller's message)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MergescopeError as exc:
            raise gr.Error(one_line(str(exc))) from None
    return wrapped


def plan_arg(value: Any) -> MergePlan:
    """A plan from YAML/JSON text (None or "": the base VLM) or from the mapping itself ({"rules": [...]})."""
    if isinstance(value, dict):
        return MergePlan.from_dict(value)
    if value is not None and not isinstance(value, str):
        raise LimitError(f"plan: expected YAML/JSON text or a mapping with 'rules', got {type(value).__name__}")
    return MergePlan.from_text(value or "")


def question_arg(value: Any) -> str:
    """The question as text, stripped; refused when empty, too long or not text."""
    return check_question(as_text(value, "the question"))


def int_arg(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in [low, high] (an integral float or numeric text is accepted)."""
    return bounded_int(value, what, low, high)


def json_text(value: Any, what: str, shape: str) -> Any:
    """`value` parsed when it is JSON text (a list sent as a string), size-checked first; anything else as
    it is. Raises LimitError (one line: `what`, then "give `shape`") for text that is not JSON."""
    if not isinstance(value, str):
        return value
    check_size(value, what)
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise LimitError(f"{what}: {brief(value, 60)} is not JSON; give {shape}") from None


def numbers_arg(value: Any, what: str, low: float, high: float, max_items: int,
                default: list[float] | None = None) -> list[float]:
    """A list of 1 to `max_items` finite numbers in [low, high]: a real list, one number, or the list as
    JSON text ("[0, 0.5, 1]"). None or "" gives `default` (refused when there is none)."""
    shape = (f"a list of 1 to {max_items} numbers in [{low:g}, {high:g}] (or that JSON list as text), "
             f"e.g. [{low:g}, {high:g}]")
    if value is None or value == "":
        if default is None:
            raise LimitError(f"{what}: give {shape}")
        return list(default)
    value = json_text(value, what, shape)
    if _is_number(value):
        value = [value]
    if not isinstance(value, list) or not 0 < len(value) <= max_items:
        raise LimitError(f"{what}: give {shape}, got {brief(value, 60)}")
    for item in value:
        if not _is_number(item) or not low <= item <= high:
            raise LimitError(f"{what}: {brief(item, 40)} is not a number in [{low:g}, {high:g}]; give {shape}")
    return [float(item) for item in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def image_arg(value: Any) -> Image.Image | None:
    """The picture of an image argument (None for no image), read by `merging.io.images.read_image`.

    Takes None or "", a path to a file uploaded to this app, or a FileData dict ({"path": ..., "meta":
    {"_type": "gradio.FileData"}}, what `gradio_client.handle_file` sends and a file component holds).
    Any other path is refused (a script must not read the server's files), as is a data: URL.
    """
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            raise LimitError("image: send the image as an upload (gradio_client's handle_file), not as a data: URL")
        value = value.get("path")
        if not isinstance(value, str) or not value:
            raise LimitError("image: the FileData has no uploaded file ('path'); send it with gradio_client's "
                             "handle_file(...)")
    if not isinstance(value, str):
        raise LimitError(f"image: expected None, an uploaded file's path or gradio_client's handle_file(...), "
                         f"got {type(value).__name__}")
    check_size(value, "image path", 4096)
    try:
        where = Path(value).resolve()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops
        raise LimitError(f"image {brief(value, 60)}: not a file path") from None
    if not where.is_relative_to(upload_folder().resolve()):
        raise LimitError(f"image {brief(value, 60)}: upload it with the request (gradio_client's handle_file); "
                         f"other paths are refused")
    return read_image(where)
