"""What the UI holds: the engine behind an answerer, the examples, where files may be written, and the
limits of a public demo. Every tab's handlers take an `Explorer` explicitly."""

from __future__ import annotations

import argparse
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from cache import AnswerCache, config_key
from merging.run.answerer import Answerer
from merging.run.generate import GenerationSettings
from merging.run.stack import build_stack, model_spec
from merging.stats.distance import role_distances
from merging.engine.merge_engine import MergeEngine
from merging.evals.eval_sets import EvalItem, load_eval_set

from .guard import History, RateLimiter, client_id

PUBLIC_MAX_NEW_TOKENS, PUBLIC_MAX_SWEEP_ANSWERS = 64, 64
PUBLIC_MAX_SEARCH_TRIALS, PUBLIC_MAX_SEARCH_ITEMS = 20, 32  # a public search: trials and eval items
PUBLIC_DELETE_CACHE = (300, 1800)  # Gradio's temp files (uploads): checked every 5 min, deleted after 30 min
HISTORY_LIMIT = 200                # rows the History tab lists (private mode; public: HISTORY_PER_CLIENT)
GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}   # model work: one at a time
CHEAP = {"concurrency_limit": None, "queue": False}      # UI bookkeeping: never queued behind it


@dataclass
class Explorer:
    """What the UI needs: the engine behind an answerer, examples, and where files may be written.

    `public` (a demo anyone can reach): the eval set is fixed, answers and sweeps are capped, export is
    off, each client address gets at most `rate_limit` model requests a minute (all of them together
    `global_rate_limit`), and History shows a visitor only what they asked. `proxy_hops`: how many
    trusted reverse proxies stand in front (1 on Spaces), to read the address (ui/guard.py).
    """

    answerer: Answerer
    eval_items: list[EvalItem] = field(default_factory=list)
    eval_spec: str = ""
    export_dir: Path | None = None
    public: bool = False
    rate_limit: int = 12
    global_rate_limit: int | None = None   # default: 10 × rate_limit
    proxy_hops: int = 0
    _distances: dict[str, list[dict]] = field(default_factory=dict)  # per donor
    _limiter: RateLimiter | None = None
    history: History = field(default_factory=History)
    search_dir: Path = Path("runs/search")  # the Search tab's studies, one folder per configuration
    answer_tokens: int = 32  # Compare's default max new tokens (the pair's usual answer length)

    def __post_init__(self):
        if self.public:
            self.export_dir = None
            self._limiter = RateLimiter(self.rate_limit, global_limit=self.global_rate_limit)

    def client(self, request: gr.Request | None) -> str:
        """Who is asking: the client's address (never the client-chosen session hash)."""
        return client_id(request, self.proxy_hops)

    def admit(self, request: gr.Request | None) -> None:
        """Count a model request against the client's and the global rate limit (public mode only);
        raises MergescopeError (one line) when over either."""
        if self._limiter is not None:
            self._limiter.check(self.client(request))

    def remember(self, request: gr.Request | None, config: dict) -> None:
        """Note that this client asked about `config` (its History in public mode)."""
        self.history.add(self.client(request), config_key(config))

    @property
    def max_new_tokens(self) -> int:
        return PUBLIC_MAX_NEW_TOKENS if self.public else 512

    @property
    def answer_settings(self) -> GenerationSettings:
        """Greedy generation of the pair's usual answer length within this demo's cap: Compare's start
        value and the skill scores' settings."""
        return GenerationSettings(max_new_tokens=min(self.answer_tokens, self.max_new_tokens))

    @property
    def engine(self) -> MergeEngine:
        return self.answerer.engine

    @property
    def num_layers(self) -> int:
        return self.engine.pair.layout.num_layers

    def distances(self, donor: str | None = None) -> list[dict]:
        name = self.answerer.donor_name(donor)
        if name not in self._distances:
            self._distances[name] = role_distances(self.answerer.pair_with(name))
        return self._distances[name]


def build_explorer(args: argparse.Namespace, **options) -> Explorer:
    """The explorer the app serves, from the parsed model arguments (`merging.run.stack.add_model_args`),
    `--eval-set` and `--cache-dir`: the eval set read first (a bad one fails before minutes of model
    loading), then the stack, with the pair's usual answer length as Compare's default. app.py and the
    cache warm-up (ui/warm.py) both build theirs here, so a warmed entry has the key the page asks for.
    `options`: Explorer's other fields. Raises MergescopeError for a bad model, dtype, device or eval set."""
    spec = model_spec(args)
    eval_spec = args.eval_set or spec.eval_set
    items = load_eval_set(eval_spec) if eval_spec else []
    answerer = build_stack(spec, AnswerCache(args.cache_dir)).answerer
    return Explorer(answerer, items, eval_spec or "", answer_tokens=spec.answer_tokens, **options)


def bind(fn, *fixed):
    """`fn` with its first arguments fixed (the explorer, ...): a function Gradio reads as it reads `fn`,
    with `fn`'s name (its API name), the remaining parameters and their type hints (for gr.Request,
    gr.SelectData and gr.api)."""
    if inspect.isgeneratorfunction(fn):
        def bound(*args, **kwargs):
            yield from fn(*fixed, *args, **kwargs)
    else:
        def bound(*args, **kwargs):
            return fn(*fixed, *args, **kwargs)
    hints = typing.get_type_hints(fn)
    params = [p.replace(annotation=hints.get(p.name, p.empty))
              for p in list(inspect.signature(fn).parameters.values())[len(fixed):]]
    bound.__signature__ = inspect.Signature(params, return_annotation=hints.get("return", inspect.Signature.empty))
    bound.__annotations__ = {k: v for k, v in hints.items() if k in {p.name for p in params} or k == "return"}
    bound.__name__ = bound.__qualname__ = fn.__name__
    bound.__doc__ = fn.__doc__
    return bound
