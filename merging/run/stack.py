"""The composition root: from the model options to a loaded pair, its engine, worker and answerer.

One place wires the stack, for every entry point — the app (app.py), the CLI (merging/cli/), the Ray
workers of sweeps and searches (merging/experiments/) and the toy demo — so they cannot drift apart:

    add_model_args(parser)  →  model_spec(args)  →  build_stack(spec, cache)  →  Stack(pair, engine, answerer)

A `ModelSpec` is plain data (it crosses to Ray workers); it is checked when made, so a bad option
fails before minutes of model loading.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cache import AnswerCache
from merging.engine.device_cache import DEVICE_CACHE_HELP, budget_from_gb
from merging.engine.merge_engine import MergeEngine
from merging.io.checkpoint import Checkpoint
from merging.model.known_pairs import KNOWN_PAIRS, resolve_models
from merging.model.pair import ModelPair, load_pair, resolve_model_dir
from merging.run.answerer import Answerer
from merging.stats.gram_files import gram_paths

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options that name and place the models: a known pair or folders / hub ids, dtype, device,
    partial donors, the device cache and RegMean's Gram files."""
    parser.add_argument("--pair", help=f"a known pair ({', '.join(KNOWN_PAIRS)}), instead of --vlm/--llm/--base; "
                                       "default: the shipped toy pair")
    parser.add_argument("--vlm", help="VLM folder or hub id (resident, merged in place)")
    parser.add_argument("--llm", help="donor text LLM folder or hub id (read lazily)")
    parser.add_argument("--base", help="optional common base model (for methods that need one)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto, auto-multi")
    parser.add_argument("--allow-partial", action="store_true",
                        help="merge a donor that lacks some of the VLM's language-model tensors (they keep the "
                             "VLM's values; reported as 'N of M'); refused without it")
    parser.add_argument("--device-cache-gb", type=float, help=DEVICE_CACHE_HELP)
    parser.add_argument("--grams-vlm", help="the VLM's Gram file (`mergescope grams`), for regmean rules")
    parser.add_argument("--grams-donor", help="the donor's Gram file (`mergescope grams`), for regmean rules")


@dataclass(frozen=True)
class ModelSpec:
    """What to load, as plain data: the models (folders or hub ids), how, and the donors on offer.

    `donor_label` names the pair's own donor; `other_donors` are (label, folder or hub id) of more donors
    of the same architecture; `eval_set` is the pair's own eval set (None: none ships with it)."""

    vlm: str
    llm: str
    base: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    grams: dict[str, str] | None = None
    allow_partial: bool = False
    device_cache_bytes: int | None = None
    donor_label: str = "donor"
    other_donors: tuple[tuple[str, str], ...] = ()
    eval_set: str | None = None
    answer_tokens: int = 32  # the pair's usual answer length: the UI's default max new tokens


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The spec the options of `add_model_args` name. Raises MergescopeError (one line) for an unknown
    pair, a VLM without a donor, one Gram file without the other or a negative device cache."""
    models = resolve_models(args.pair, args.vlm, args.llm, args.base)
    return ModelSpec(str(models.vlm), str(models.llm), str(models.base) if models.base else None, args.dtype,
                     args.device, gram_paths(args.grams_vlm, args.grams_donor), args.allow_partial,
                     budget_from_gb(args.device_cache_gb), models.donor_label,
                     tuple((label, str(path)) for label, path in models.other_donors), models.eval_set,
                     models.answer_tokens)


@dataclass(frozen=True)
class Stack:
    """The loaded pair, the engine that merges it in place and the answerer (the cache in front of the
    engine's model worker, `answerer.worker`)."""

    pair: ModelPair
    engine: MergeEngine
    answerer: Answerer


def build_stack(spec: ModelSpec, cache: AnswerCache | None = None, device: str | None = None) -> Stack:
    """Load `spec`'s pair (on `device`, default the spec's) and build its engine and answerer with `cache`.
    Raises MergescopeError (and its CheckpointError, LayoutError) for models that cannot be loaded or merged."""
    pair = load_pair(spec.vlm, spec.llm, spec.base, dtype=spec.dtype, device=device or spec.device,
                     allow_partial=spec.allow_partial)
    engine = MergeEngine(pair, grams=spec.grams, device_cache_bytes=spec.device_cache_bytes)
    donors = {label: Checkpoint(resolve_model_dir(path)) for label, path in spec.other_donors}
    return Stack(pair, engine, Answerer(engine, cache, donors, spec.donor_label))
