"""The command line's shared wiring: option types that refuse values meaning nothing, the model
options every command takes, and the pair, engine and answerer they name (loaded lazily: `--help`
and a refused option never import torch)."""

from __future__ import annotations

import argparse

from merging.engine.device_cache import DEVICE_CACHE_HELP, budget_from_gb
from merging.engine.merge_engine import MergeEngine
from merging.experiments.distributed import PairSpec
from merging.model.known_pairs import resolve_models
from merging.model.pair import load_pair
from merging.run.answerer import Answerer
from merging.stats.gram_files import gram_paths


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
    """The model options every command takes: a known pair or folders / hub ids, dtype, device, partial donors."""
    parser.add_argument("--pair", help="a known pair (merging/model/known_pairs.py), instead of --vlm/--llm/--base; "
                                       "default: the shipped toy pair")
    parser.add_argument("--vlm", help="VLM folder or hub id (resident, merged in place)")
    parser.add_argument("--llm", help="donor text LLM folder or hub id (read lazily)")
    parser.add_argument("--base", help="optional common base model (for methods that need one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    parser.add_argument("--allow-partial", action="store_true",
                        help="merge a donor that lacks some of the VLM's language-model tensors (they keep the "
                             "VLM's values; reported as 'N of M'); refused without it")
    parser.add_argument("--device-cache-gb", type=float, help=DEVICE_CACHE_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def named_models(args: argparse.Namespace):
    """The models the options name (`known_pairs.KnownPair`); MergescopeError for an unknown pair."""
    return resolve_models(args.pair, args.vlm, args.llm, args.base)


def load_named_pair(args: argparse.Namespace):
    """The named pair loaded at the options' dtype and device (`pair.load_pair`)."""
    models = named_models(args)
    return load_pair(models.vlm, models.llm, models.base, dtype=args.dtype, device=args.device,
                     allow_partial=args.allow_partial)


def gram_args(parser: argparse.ArgumentParser) -> None:
    """The RegMean Gram file options (both or neither)."""
    parser.add_argument("--grams-vlm", help="the VLM's Gram file (`grams`), for regmean rules")
    parser.add_argument("--grams-donor", help="the donor's Gram file (`grams`), for regmean rules")


def build_engine(args: argparse.Namespace):
    """The pair loaded as named, with the Gram files attached (both or none)."""
    grams = gram_paths(args.grams_vlm, args.grams_donor)  # bad flags fail before the model is loaded
    budget = budget_from_gb(args.device_cache_gb)  # a bad flag fails before the model is loaded
    return MergeEngine(load_named_pair(args), grams=grams, device_cache_bytes=budget)


def pair_spec(args: argparse.Namespace):
    """What a Ray worker loads, from the model options."""
    models = named_models(args)
    return PairSpec(str(models.vlm), str(models.llm), str(models.base) if models.base else None, args.dtype,
                    args.device, gram_paths(args.grams_vlm, args.grams_donor), args.allow_partial)


def answerer_for(args: argparse.Namespace, cache):
    """The answerer of the loaded pair with `cache`, its donor named as the pair names it."""
    return Answerer(build_engine(args), cache, default_donor=named_models(args).donor_label)
