"""The command line's shared wiring: option types that refuse values meaning nothing, and the model
options every command takes with the stack they name (merging/run/stack.py, the composition root)."""

from __future__ import annotations

import argparse

from cache import AnswerCache
from merging.run.stack import Stack, add_model_args, build_stack, model_spec


def whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r:.40} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
    return value


def positive(text: str) -> int:
    """An option's whole number ≥ 1 (0 tokens, 0 workers, a batch of 0 mean nothing)."""
    return whole(text, 1)


def natural(text: str) -> int:
    """An option's whole number ≥ 0 (a seed)."""
    return whole(text, 0)


def text(text: str) -> str:
    """An option's non-empty text (an empty stop string, path or question means nothing)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty value means nothing here; give one or leave the option out")
    return text


def pair_args(parser: argparse.ArgumentParser) -> None:
    """The options every command takes: the models (`stack.add_model_args`) and --json."""
    add_model_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def stack_of(args: argparse.Namespace, cache: AnswerCache | None = None) -> Stack:
    """The pair the options name, loaded, with its engine and an answerer on `cache` (`stack.build_stack`)."""
    return build_stack(model_spec(args), cache)
