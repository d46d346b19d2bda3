"""How each Mergescope method is written as the mergekit (0.1.5) method of the same name: which model
is mergekit's base, how α becomes mergekit's weights, which parameters it takes and under which names,
and the comment lines `mergekit.yaml` carries about where the two differ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from merging.errors import MergescopeError
from merging.methods import get_method


class MergekitUnsupported(MergescopeError):
    """A plan mergekit cannot express; the message says why."""


@dataclass(frozen=True)
class _Spec:
    """How one of our methods is written as mergekit's method of the same name."""

    base: str = "none"                       # base_model: "common" (the pair's base), "vlm", or "none"
    weights: str = "models"                  # "models": weight (1−α, α); "t": t = α; "none": no weights (α = 1)
    per_model: tuple[str, ...] = ()          # our parameters mergekit takes per model (its NON_BASE scope)
    shared: tuple[str, ...] = ()             # our parameters mergekit takes once (its SHARED scope)
    fixed: tuple[tuple[str, Any], ...] = ()  # constant shared parameters
    rename: tuple[tuple[str, str], ...] = ()  # our name → mergekit's, where they differ
    keep: tuple[tuple[str, Any], ...] = ()   # parameter values at which a weightless method keeps the VLM

    def mk(self, name: str) -> str:
        return dict(self.rename).get(name, name)


_RESCALE = (("rescale", True),)
MERGEKIT = {
    "linear": _Spec(fixed=(("normalize", False),)),
    "slerp": _Spec(base="vlm", weights="t"),
    "task_arithmetic": _Spec("common", shared=("lambda",)),
    "ties": _Spec("common", per_model=("density",), shared=("lambda", "normalize")),
    "dare_linear": _Spec("common", per_model=("density",), shared=("lambda",), fixed=_RESCALE),
    "dare_ties": _Spec("common", per_model=("density",), shared=("lambda", "normalize"), fixed=_RESCALE),
    "breadcrumbs": _Spec("common", per_model=("density", "gamma"), shared=("lambda",)),
    "breadcrumbs_ties": _Spec("common", per_model=("density", "gamma"), shared=("lambda", "normalize")),
    "della": _Spec("common", per_model=("density", "epsilon"), shared=("lambda", "normalize"), fixed=_RESCALE),
    "della_linear": _Spec("common", per_model=("density", "epsilon"), shared=("lambda",), fixed=_RESCALE),
    "model_stock": _Spec("common", "none", shared=("filter_wise",)),
    "sce": _Spec("common", "none", shared=("select_topk",)),
    "ram": _Spec("common", "none", shared=("epsilon",)),
    "ramplus_tl": _Spec("common", "none", shared=("r", "rho_max", "epsilon"), rename=(("rho_max", "alpha"),)),
    "nuslerp": _Spec(shared=("nuslerp_row_wise", "nuslerp_flatten")),
    "multislerp": _Spec(shared=("normalize_weights", "eps")),
    "karcher": _Spec(weights="none", shared=("max_iter", "tol")),
    "nearswap": _Spec("vlm", "none", shared=("t",), keep=(("t", 0.0),)),
    "arcee_fusion": _Spec("vlm", "none"),
}
MERGEKIT_METHODS = tuple(MERGEKIT)


def fallback(method: str, name: str):
    """A parameter's value for tensors no rule matches (density and λ 1: the VLM's task vector as it is)."""
    spec = MERGEKIT[method]
    if name in dict(spec.keep):
        return dict(spec.keep)[name]
    if name in ("density", "lambda"):
        return 1.0
    return mk_value(method, name, {p.name: p.default for p in get_method(method).params}[name])


def mk_value(method: str, name: str, value):
    """Our value as mergekit's: 0/1 switches become booleans."""
    p = {p.name: p for p in get_method(method).params}[name]
    return bool(value) if p.kind is int and (p.low, p.high) == (0, 1) else value


def check_weightless(method: str, layout, targets: dict) -> None:
    """mergekit's weightless methods compute their merge of every tensor: our α must be 1 throughout
    (and no tensor left to the VLM, unless a parameter value keeps it, as nearswap's t = 0 does)."""
    spec = MERGEKIT[method]
    if spec.weights != "none":
        return
    for slot in layout.slots:
        target = targets.get(slot.name)
        if target is not None and target.alpha != 1:
            raise MergekitUnsupported(f"mergekit's {method} takes no per-model weights, so it reproduces α = 1 only; "
                                      f"the plan gives {slot.rel} α = {target.alpha:g}")
        if target is None and not spec.keep:
            raise MergekitUnsupported(f"mergekit's {method} merges every tensor and cannot keep the VLM's {slot.rel}, "
                                      f"which no rule of the plan matches")


def method_notes(method: str, plan, partial: bool) -> list[str]:
    """The mergekit.yaml comment lines on how mergekit's `method` relates to ours."""
    spec = MERGEKIT[method]
    if method == "linear":
        return ["linear: weights (1−α, α), normalize false → (1−α)·θ_V + α·θ_L. Mergescope computes",
                "θ_V + α·(θ_L − θ_V) (bf16: one fused lerp): equal up to fp32 rounding, which can move",
                "a rare element by one bf16 step."]
    if method == "slerp":
        return ["slerp: the VLM is base_model, so t = α (t = 0 → the VLM). Equal up to fp32 rounding."]
    if spec.weights == "none":
        notes = [f"{method}: mergekit takes no per-model weights; every merged tensor of this plan has α = 1,",
                 "where Mergescope's merge is mergekit's"
                 + (" (the VLM is base_model)." if spec.base == "vlm" else ".")]
        if partial:
            keep = ", ".join(f"{k} = {v}" for k, v in spec.keep)
            notes += [f"Tensors no rule matches get {keep}, which keeps the VLM exactly."]
        if method == "arcee_fusion":
            notes += ["arcee_fusion: mergekit estimates the importance quartiles from 10⁶ random samples for",
                      "tensors larger than that; Mergescope computes them exactly."]
        if method == "ramplus_tl":
            notes += ["ramplus_tl: mergekit's `alpha` is the plan's rho_max (α is the donor's weight here)."]
        return notes
    if spec.base == "none":
        return [f"{method}: weights (1−α, α), no base_model. Equal up to fp32 rounding."]
    notes = [f"{method}: weights (1−α, α) on the task vectors θ_i − θ_B, base_model = the common base."]
    if partial:
        notes += ["Tensors outside every rule get weights (1, 0) and density 1: θ_B + (θ_V − θ_B), equal to",
                  "θ_V up to one fp32 rounding (Mergescope keeps θ_V exactly)."]
    if method == "ties":
        notes += ["ties: mergekit keeps the int(density·n) largest |τ| (Mergescope: ⌈density·n⌉, and every",
                  "entry tied with the threshold); identical when density·n is whole and magnitudes distinct."]
    if method.startswith("breadcrumbs"):
        notes += ["breadcrumbs: both keep magnitude ranks [n − k − int(γn), n − int(γn)), k = int(density·n);",
                  "Mergescope also keeps entries tied with the band's ends: identical with distinct magnitudes."]
    if method.startswith(("dare", "della")):
        seeds = sorted({r.params.get("seed", 0) for r in plan.rules if r.method == method})
        scale = "1/density" if method.startswith("dare") else "1/p (p: the entry's keep probability)"
        who = method.split("_")[0].upper()
        notes += [f"{who}: mergekit draws its masks from torch's global generator (mergekit-yaml",
                  f"--random-seed; the plan's seed {', '.join(map(str, seeds))} does not carry over) and rescales",
                  "kept entries to the task vector's L1 norm (rescale: true); Mergescope scales them by",
                  f"{scale}, with per-tensor seeded masks. Equal in expectation, not per element."]
    return notes
