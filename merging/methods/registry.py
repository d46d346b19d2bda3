"""The merge-method registry: `@merge_method` declares a method once, where its function is defined.

A method writes the merged value of one tensor into `out` (the resident parameter, already on its
device) from the VLM's original θ_V, the donor's θ_L and, where it needs one, the base θ_B — all of
one shape, any float dtype — with α ∈ [0, 1] the donor's weight (w_V = 1 − α, w_L = α). It keeps no
state: the same inputs give bit-identical output, which makes the engine history-independent.
Numerics: fp32 temporaries over CHUNK_ELEMENTS-sized flat chunks, rounded once to `out.dtype`.

The declaration (name, formula, source, parameters, needs) is the single source for plan
validation, the UI's controls and the README's methods table (`methods_table`). The engine calls
`fn(out, vlm, donor, base, alpha, **params, **context)`; `context` holds what the method declares:
"name" (the tensor's decoder-relative name, e.g. `layers.3.self_attn.q_proj.weight`: seeds per-tensor
random masks) and "grams" ((G_V, G_L), float32 [in, in], for a linear layer's weight, else None).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from merging.errors import PlanError
from merging.limits import brief

Tensor = torch.Tensor
CHUNK_ELEMENTS = 1 << 20  # fp32 temporaries stay ≤ 4 MiB each: cache-sized, never model-sized
CONTEXT = ("name", "grams")  # what the engine can hand a method beyond the tensors


@dataclass(frozen=True)
class ParamDef:
    """One method parameter: name, type (float or int), default and inclusive bounds (`low_open`:
    exclusive lower bound), with a one-line doc for the UI and the README."""

    name: str
    kind: type
    default: float | int
    low: float
    high: float
    doc: str
    low_open: bool = False

    def check(self, value: object, where: str) -> float | int:
        """`value` as this parameter's type; raises PlanError (naming `where`) if it is not a number of
        that type within the bounds."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind is int and isinstance(value, float) and not value.is_integer()):
            raise PlanError(f"{where}: {self.name} must be {self.kind.__name__}, got {brief(value)}")
        value = self.kind(value)
        below = value <= self.low if self.low_open else value < self.low
        if not math.isfinite(value) or below or value > self.high:
            bracket = "(" if self.low_open else "["
            raise PlanError(f"{where}: {self.name}={value} is outside {bracket}{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class MergekitSpec:
    """How a method is written as mergekit's (0.1.5) method of the same name (merging/export/mergekit_config.py).

    `base`: mergekit's base_model — "common" (the pair's base), "vlm", or "none"; `weights`: "models"
    (per-model weights (1−α, α)), "t" (t = α), or "none" (no weights: α = 1 only); `per_model` / `shared`:
    our parameters mergekit takes per model (its NON_BASE scope) / once (SHARED); `fixed`: constant shared
    parameters; `rename`: our name → mergekit's where they differ; `keep`: parameter values at which a
    weightless method keeps the VLM; `intro`: comment lines replacing the generic first note; `notes`:
    comment lines on where the two differ (`{seeds}` becomes the plan's seeds for the method)."""

    base: str = "none"
    weights: str = "models"
    per_model: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    fixed: tuple[tuple[str, object], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    keep: tuple[tuple[str, object], ...] = ()
    intro: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def mk(self, name: str) -> str:
        """mergekit's name of our parameter `name`."""
        return dict(self.rename).get(name, name)


@dataclass(frozen=True)
class Method:
    """A registered merge method (see the module docstring for the call convention)."""

    name: str
    fn: Callable[..., None]         # fn(out, vlm, donor, base, alpha, **params, **context) -> None
    formula: str                    # the one written form of the method, printed by the README and UI
    source: str = ""                # paper or tool the formula follows
    params: tuple[ParamDef, ...] = field(default=())
    needs_base: bool = False
    context: tuple[str, ...] = ()   # subset of CONTEXT the engine passes as keywords
    check: Optional[Callable[[dict], Optional[str]]] = None  # filled params -> what is wrong with them, or None
    elementwise: bool = False       # every output element depends only on the same element of the inputs
    mergekit: Optional[MergekitSpec] = None  # how mergekit writes it (None: mergekit has no such method)

    def __post_init__(self):
        unknown = sorted(set(self.context) - set(CONTEXT))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown context {unknown}; known: {list(CONTEXT)}")

    @property
    def needs_grams(self) -> bool:
        """Whether the method reads Gram matrices (RegMean): the engine then needs Gram files attached."""
        return "grams" in self.context

    def normalize_params(self, params: object, where: str) -> dict:
        """A plan rule's `params` with defaults filled in; raises PlanError for unknown or bad ones."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise PlanError(f"{where}: params must be a mapping, got {brief(params)}")
        known = {p.name: p for p in self.params}
        extra = sorted(set(params) - set(known), key=str)
        if extra:
            raise PlanError(f"{where}: method {self.name!r} has no parameter(s) {brief(extra)}; "
                            f"it takes {sorted(known) or 'none'}")
        filled = {name: p.check(params.get(name, p.default), f"{where}.{name}") for name, p in known.items()}
        problem = self.check(filled) if self.check is not None else None
        if problem:
            raise PlanError(f"{where}: {problem}")
        return filled


REGISTRY: dict[str, Method] = {}


def merge_method(name: str, *, formula: str, source: str = "", params: tuple[ParamDef, ...] = (),
                 needs_base: bool = False, context: tuple[str, ...] = (),
                 check: Optional[Callable[[dict], Optional[str]]] = None, elementwise: bool = False,
                 mergekit: Optional[MergekitSpec] = None) -> Callable:
    """Register the decorated function as merge method `name` (as mergekit's `@merge_method` does).

    `check`, if given, receives a rule's filled-in parameters and returns what is wrong with them
    together (e.g. DELLA's density ± epsilon outside (0, 1)), or None: plan validation raises it.
    `elementwise` lets the engine write the method's tensors in parallel chunks on the CPU
    (merging/engine/cpu_pool.py); `mergekit` says how the export writes it as a mergekit config.

    The returned function fills in the declared parameters' defaults and refuses undeclared ones
    (TypeError), so a method body reads `params["density"]`; a method that needs a base gets a
    PlanError when called without one. Raises ValueError for an unknown context or a taken name.
    """
    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if name in REGISTRY:
            raise ValueError(f"merge method {name!r} is already registered")
        declared = {p.name: p.default for p in params}

        @functools.wraps(fn)
        def method(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float,
                   **kwargs) -> None:
            context = {k: kwargs.pop(k) for k in CONTEXT if k in kwargs}
            unknown = sorted(set(kwargs) - set(declared))
            if unknown:
                raise TypeError(f"{name}: unexpected parameter(s) {unknown}; expected {sorted(declared)}")
            if needs_base and base is None:
                raise PlanError(f"method {name!r} needs a base model (the common ancestor of VLM and donor)")
            filled = {**declared, **kwargs}
            problem = check(filled) if check is not None else None
            if problem:
                raise PlanError(f"method {name!r}: {problem}")
            fn(out, vlm, donor, base, alpha, **filled, **context)

        REGISTRY[name] = Method(name, method, formula, source, params, needs_base, context, check, elementwise,
                                mergekit)
        return method

    return register


def get_method(name: object, where: str = "method") -> Method:
    """The registered method `name`; raises PlanError (naming `where` and the choices) otherwise."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise PlanError(f"{where}: unknown merge method {brief(name)}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def copy_endpoint(out: Tensor, vlm: Tensor, donor: Tensor, alpha: float) -> bool:
    """At α = 0 or 1, write θ_V or θ_L exactly and return True (in floating point an interpolation at
    its endpoint need not round back to it); False for any other α."""
    if alpha == 0 or alpha == 1:
        out.copy_(vlm if alpha == 0 else donor)
        return True
    return False


def chunks(*tensors: Tensor) -> Iterator[list[Tensor]]:
    """Matching flat chunks (views, no copies) of same-shaped tensors; raises ValueError otherwise."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"merge inputs must have one shape, got {sorted(shapes)}")
    flats = [t.view(-1) for t in tensors]
    for start in range(0, flats[0].numel(), CHUNK_ELEMENTS):
        yield [f[start:start + CHUNK_ELEMENTS] for f in flats]


def methods_table() -> str:
    """The README's methods table, generated from the registry (a test keeps the README in sync)."""
    lines = ["| method | needs base | formula | source | parameters |", "|---|---|---|---|---|"]
    for m in REGISTRY.values():
        params = "; ".join(f"`{p.name}` (default {p.default}): {p.doc}" for p in m.params) or "–"
        formula = m.formula.replace("|", "\\|")  # a literal | inside a table cell
        lines.append(f"| `{m.name}` | {'yes' if m.needs_base else 'no'} | {formula} | {m.source or '–'} | {params} |")
    return "\n".join(lines)
