"""How each Mergescope method is written as the mergekit (0.1.5) method of the same name: which model
is mergekit's base, how α becomes mergekit's weights, which parameters it takes and under which names,
and the comment lines `mergekit.yaml` carries about where the two differ."""

from __future__ import annotations

from merging.errors import MergescopeError
from merging.methods import REGISTRY, get_method


class MergekitUnsupported(MergescopeError):
    """A plan mergekit cannot express; the message says why."""


MERGEKIT = {m.name: m.mergekit for m in REGISTRY.values() if m.mergekit is not None}  # declared per method
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
    """The mergekit.yaml comment lines on how mergekit's `method` relates to ours: a first note from how
    it is written (or the method's own `intro`), the partial-plan note, then the method's own `notes`."""
    spec = MERGEKIT[method]
    seeds = ", ".join(map(str, sorted({r.params.get("seed", 0) for r in plan.rules if r.method == method})))
    own = [line.format(seeds=seeds) for line in spec.notes]
    if spec.intro:
        return list(spec.intro) + own
    if spec.weights == "none":
        notes = [f"{method}: mergekit takes no per-model weights; every merged tensor of this plan has α = 1,",
                 "where Mergescope's merge is mergekit's"
                 + (" (the VLM is base_model)." if spec.base == "vlm" else ".")]
        if partial:
            keep = ", ".join(f"{k} = {v}" for k, v in spec.keep)
            notes += [f"Tensors no rule matches get {keep}, which keeps the VLM exactly."]
        return notes + own
    if spec.base == "none":
        return [f"{method}: weights (1−α, α), no base_model. Equal up to fp32 rounding."] + own
    notes = [f"{method}: weights (1−α, α) on the task vectors θ_i − θ_B, base_model = the common base."]
    if partial:
        notes += ["Tensors outside every rule get weights (1, 0) and density 1: θ_B + (θ_V − θ_B), equal to",
                  "θ_V up to one fp32 rounding (Mergescope keeps θ_V exactly)."]
    return notes + own
