"""Merge methods: one pure tensor function each, behind a registry.

A method writes the merged value of one tensor into `out` (the resident parameter, already on its
device), from the VLM's original θ_V, the donor's θ_L and optionally a base θ_B, with α = the
donor's weight. It keeps no state: the same inputs always give bit-identical output, which is what
makes the engine history-independent. Numerics: computed in fp32, rounded once to `out.dtype`.

Each method declares its parameters once (`ParamDef`); that declaration validates plans and is the
single source for the UI's controls and the README's methods table.

Methods (w_V = 1−α, w_L = α; the task vectors τ_V = θ_V − θ_B, τ_L = θ_L − θ_B need a base θ_B):

- linear           θ = θ_V + α·(θ_L − θ_V)
- slerp            spherical interpolation of the whole flattened tensors (linear when collinear)
- task_arithmetic  θ = θ_B + λ·(w_V·τ_V + w_L·τ_L)
- ties             τ's trimmed to their top-density magnitudes, sign election, disjoint (mean) merge
- dare_linear      τ's randomly dropped (keep probability = density, kept ×1/density), then as
                   task_arithmetic
- dare_ties        DARE's drop, then TIES' sign election and disjoint merge (no magnitude trim)
- regmean          per linear layer, W = (Σ_i c_i·G̃_i)⁻¹·Σ_i c_i·G̃_i·W_i with c = (1−α, α) and the
                   Gram matrices G of each model's own layer inputs (`merging/grams.py`); every other
                   tensor of a regmean rule (norms, embeddings, biases) is merged linearly

Context: the engine calls `fn(out, vlm, donor, base, alpha, **params, **context)`, where `context`
holds what the method declares in `Method.context`: "name" (the tensor's decoder-relative name, e.g.
`layers.3.self_attn.q_proj.weight` — DARE seeds its masks with it, so every tensor gets its own) and
"grams" ((G_V, G_L) for the weight of a linear layer, None for any other tensor). Called directly,
methods take these as optional keywords.

Memory: everything streams over CHUNK_ELEMENTS-sized flat chunks with fp32 temporaries, except TIES'
magnitude threshold, which needs one full-size fp32 |τ| buffer per task vector at a time, and
RegMean, which solves in float64 (see `regmean_solve` for its scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .errors import PlanError
from .limits import brief

Tensor = torch.Tensor
CHUNK_ELEMENTS = 1 << 20  # fp32 temporaries stay ≤ 4 MiB each: cache-sized, never model-sized


@dataclass(frozen=True)
class ParamDef:
    name: str
    kind: type                      # float or int
    default: float | int
    low: float                      # inclusive bounds (low_open: exclusive lower bound)
    high: float
    doc: str
    low_open: bool = False

    def check(self, value: object, where: str) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind is int and isinstance(value, float) and not value.is_integer()):
            raise PlanError(f"{where}: {self.name} must be {self.kind.__name__}, got {brief(value)}")
        value = self.kind(value)
        below = value <= self.low if self.low_open else value < self.low
        if not math.isfinite(value) or below or value > self.high:
            bracket = "(" if self.low_open else "["
            raise PlanError(f"{where}: {self.name}={value} is outside {bracket}{self.low}, {self.high}]")
        return value


CONTEXT = ("name", "grams")  # what the engine can hand a method beyond the tensors (module docstring)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., None]         # fn(out, vlm, donor, base, alpha, **params, **context) -> None
    formula: str
    params: tuple[ParamDef, ...] = field(default=())
    needs_base: bool = False
    context: tuple[str, ...] = ()   # subset of CONTEXT the engine passes as keywords

    def __post_init__(self):
        unknown = sorted(set(self.context) - set(CONTEXT))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown context {unknown}; known: {list(CONTEXT)}")

    @property
    def needs_grams(self) -> bool:
        return "grams" in self.context

    def normalize_params(self, params: object, where: str) -> dict:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise PlanError(f"{where}: params must be a mapping, got {brief(params)}")
        known = {p.name: p for p in self.params}
        extra = sorted(set(params) - set(known))
        if extra:
            raise PlanError(f"{where}: method {self.name!r} has no parameter(s) {brief(extra)}; "
                            f"it takes {sorted(known) or 'none'}")
        return {name: p.check(params.get(name, p.default), f"{where}.{name}") for name, p in known.items()}


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    REGISTRY[method.name] = method
    return method


def get_method(name: object, where: str = "method") -> Method:
    """The registered method called `name`; raises PlanError (one line) for anything else."""
    if not isinstance(name, str) or name not in REGISTRY:  # a list here is unhashable: check the type first
        raise PlanError(f"{where}: unknown merge method {brief(name)}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def _chunks(*tensors: Tensor):
    """Matching flat chunks of same-shaped tensors (views, no copies)."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"merge inputs must have one shape, got {sorted(shapes)}")
    flats = [t.view(-1) for t in tensors]
    for start in range(0, flats[0].numel(), CHUNK_ELEMENTS):
        yield [f[start:start + CHUNK_ELEMENTS] for f in flats]


def linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """θ = θ_V + α · (θ_L − θ_V); α = 0 and α = 1 give θ_V and θ_L (cast to out's dtype) exactly."""
    if alpha == 0 or alpha == 1:
        # in floating point θ_V + 1·(θ_L − θ_V) need not round back to θ_L: copy the endpoints
        out.copy_(vlm if alpha == 0 else donor)
        return
    if vlm.dtype == donor.dtype == out.dtype and out.dtype in (torch.bfloat16, torch.float16):
        # torch.lerp on half types computes each element in fp32 and rounds once, fused, at memory
        # speed (no full-size temporaries). Its fp32 arithmetic differs from the loop below (fused
        # multiply-add; for α ≥ 0.5 it computes θ_L − (1−α)·(θ_L − θ_V)), which moves about 1e-4 of
        # the elements by one bf16 step. Both are deterministic, so history independence holds.
        torch.lerp(vlm, donor, alpha, out=out)
        return
    for o, v, d in _chunks(out, vlm, donor):
        v32 = v.to(torch.float32)  # may alias the (read-only) original: never modify it in place
        o.copy_(d.to(torch.float32).sub(v32).mul_(alpha).add_(v32))


register(Method("linear", linear, "θ = θ_V + α·(θ_L − θ_V)"))


# -- parameter declarations shared by several methods --------------------------------------------
LAMBDA = ParamDef("lambda", float, 1.0, 0.0, 3.0,
                  "scale λ of the merged task vector added to the base (1 = unscaled)")
TIES_DENSITY = ParamDef("density", float, 0.2, 0.0, 1.0,
                        "fraction of each task vector kept: its largest-magnitude entries", low_open=True)
DARE_DENSITY = ParamDef("density", float, 0.5, 0.0, 1.0,
                        "probability of keeping each task-vector entry; kept ones are scaled by 1/density",
                        low_open=True)
SEED = ParamDef("seed", int, 0, 0, 2**31 - 1, "seed of DARE's random drop masks (mixed with each tensor's name)")
TIES_NORMALIZE = ParamDef("normalize", int, 1, 0, 1,
                          "1: divide by the summed weights of the agreeing entries (a weighted mean, "
                          "mergekit's ties default); 0: plain weighted sum")
DARE_TIES_NORMALIZE = ParamDef("normalize", int, 0, 0, 1,
                               "1: divide by the summed weights of the agreeing entries; 0: plain "
                               "weighted sum (mergekit's dare_ties default)")


def _args(params: dict, *defs: ParamDef) -> list:
    """The values of `defs` in `params` (default where absent), for methods called directly."""
    unknown = sorted(set(params) - {p.name for p in defs})
    if unknown:
        raise TypeError(f"unexpected method parameter(s) {unknown}; expected {[p.name for p in defs]}")
    return [params.get(p.name, p.default) for p in defs]


def _require_base(base: Optional[Tensor], method: str) -> Tensor:
    if base is None:
        raise PlanError(f"method {method!r} needs a base model (the common ancestor of VLM and donor)")
    return base


# -- slerp ---------------------------------------------------------------------------------------
SLERP_COLLINEAR = 0.9995  # |cos Ω| above this: sin Ω is too small to divide by, interpolate linearly


def slerp(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float) -> None:
    """Spherical interpolation of the whole tensors, flattened to vectors (as mergekit, FusionBench):

        cos Ω = ⟨θ_V, θ_L⟩ / (‖θ_V‖·‖θ_L‖)  (clamped to [−1, 1])
        θ = [sin((1−α)·Ω)·θ_V + sin(α·Ω)·θ_L] / sin Ω

    applied to the original, unnormalised tensors. Falls back to `linear` when |cos Ω| > 0.9995
    (nearly collinear or anti-collinear) or either tensor is all zeros. α = 0 and α = 1 return θ_V
    and θ_L exactly. The dot product and norms are accumulated chunk by chunk in fp32.
    """
    if alpha == 0 or alpha == 1:
        out.copy_(vlm if alpha == 0 else donor)
        return
    sums = torch.zeros(3, dtype=torch.float32, device=out.device)  # ⟨V, L⟩, ‖V‖², ‖L‖²
    for v, d in _chunks(vlm, donor):
        v32, d32 = v.to(torch.float32), d.to(torch.float32)
        sums += torch.stack([torch.dot(v32, d32), torch.dot(v32, v32), torch.dot(d32, d32)])
    dot, vv, dd = sums.tolist()
    if not (vv > 0 and dd > 0):
        linear(out, vlm, donor, base, alpha)
        return
    cos = max(-1.0, min(1.0, dot / math.sqrt(vv * dd)))
    if abs(cos) > SLERP_COLLINEAR:
        linear(out, vlm, donor, base, alpha)
        return
    omega = math.acos(cos)
    c_v = math.sin((1 - alpha) * omega) / math.sin(omega)
    c_l = math.sin(alpha * omega) / math.sin(omega)
    for o, v, d in _chunks(out, vlm, donor):
        # .to() may alias the read-only originals: torch.mul makes the one fresh temporary
        o.copy_(torch.mul(d.to(torch.float32), c_l).add_(v.to(torch.float32), alpha=c_v))


register(Method("slerp", slerp,
                "θ = [sin((1−α)Ω)·θ_V + sin(αΩ)·θ_L] / sin Ω, cos Ω = ⟨θ_V, θ_L⟩/(‖θ_V‖‖θ_L‖); "
                "linear if |cos Ω| > 0.9995"))


# -- task-vector methods: task arithmetic, TIES, DARE ----------------------------------------------
Sparsify = Callable[[int, Tensor], Tensor]  # (0 = VLM's / 1 = donor's task vector, fp32 chunk) -> chunk


def _task_vector_merge(out: Tensor, vlm: Tensor, donor: Tensor, base: Tensor, alpha: float, lam: float, *,
                       sparsify: Optional[Sparsify] = None, consensus: bool = False,
                       normalize: bool = False) -> None:
    """θ = θ_B + λ·merge(w_V·τ̂_V, w_L·τ̂_L), chunk by chunk in fp32 (w_V = 1−α, w_L = α).

    τ̂_i = sparsify(τ_i) (or τ_i). Without consensus, merge = the plain sum w_V·τ̂_V + w_L·τ̂_L.
    With consensus (TIES), per element: the elected sign s = sgn(w_V·τ̂_V + w_L·τ̂_L) (+ when that
    sum is 0); an entry agrees when it is nonzero with sign s; merge = Σ_agreeing w_i·τ̂_i, divided
    by Σ_agreeing w_i if `normalize` (0 where nothing agrees) — mergekit's generalized task
    arithmetic with its "sum" consensus.
    """
    weights = (1.0 - alpha, alpha)
    for o, v, d, b in _chunks(out, vlm, donor, base):
        b32 = b.to(torch.float32)  # may alias the base: never edited in place
        taus = [x.to(torch.float32) - b32 for x in (v, d)]  # fresh tensors, edited in place below
        if sparsify is not None:
            taus = [sparsify(i, tau) for i, tau in enumerate(taus)]
        weighted = [tau.mul_(w) for tau, w in zip(taus, weights)]
        if consensus:
            merged = _disjoint_merge(weighted, weights, normalize)
        else:
            merged = weighted[0].add_(weighted[1])
        o.copy_(merged.mul_(lam).add_(b32))


def _disjoint_merge(weighted: list[Tensor], weights: tuple[float, ...], normalize: bool) -> Tensor:
    """TIES' elect-sign and disjoint merge of weighted task-vector chunks (consumes them)."""
    positive = torch.stack(weighted).sum(dim=0) >= 0
    agree = [torch.where(positive, x > 0, x < 0) for x in weighted]  # zero entries never agree
    merged = weighted[0].mul_(agree[0])
    for x, a in zip(weighted[1:], agree[1:]):
        merged.add_(x.mul_(a))
    if normalize:
        divisor = sum(a.to(torch.float32) * w for a, w in zip(agree, weights))
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged


def _keep_count(density: float, n: int) -> int:
    """k = ⌈density·n⌉ entries kept, at least 1 (the 1e-6 absorbs float error in density·n)."""
    return min(n, max(1, math.ceil(density * n - 1e-6)))


def _magnitude_threshold(x: Tensor, base: Tensor, density: float) -> float:
    """The k-th largest |x − θ_B| over the whole tensor, k = ⌈density·n⌉ (0.0 when k = n)."""
    n = x.numel()
    k = _keep_count(density, n)
    if k >= n:
        return 0.0
    mags = torch.empty(n, dtype=torch.float32, device=x.device)  # the one full-size temporary
    for m, xc, bc in _chunks(mags, x.reshape(-1), base.reshape(-1)):
        torch.sub(xc.to(torch.float32), bc.to(torch.float32), out=m).abs_()  # same arithmetic as τ
    return mags.kthvalue(n - k + 1).values.item()


def task_arithmetic(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float,
                    **params) -> None:
    """θ = θ_B + λ·[(1−α)·(θ_V − θ_B) + α·(θ_L − θ_B)]  (the seed paper's modality arithmetic).

    λ defaults to 1. At λ = 1 the base cancels: θ = θ_V + α·(θ_L − θ_V), plain linear interpolation
    (up to fp32 rounding; bit-identical to `linear`'s fp32 path when θ_B = θ_V). This is the reading
    when VLM and donor are both fine-tunes of the base: α moves along the line between them, and
    λ ≠ 1 scales both task vectors together (λ > 1 extrapolates away from the base, λ < 1 shrinks
    towards it); the base matters only then.
    """
    (lam,) = _args(params, LAMBDA)
    _task_vector_merge(out, vlm, donor, _require_base(base, "task_arithmetic"), alpha, lam)


def ties(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, **params) -> None:
    """TIES (Yadav et al. 2023), following mergekit's `ties` (generalized task arithmetic):

    1. trim: τ̂_i = τ_i where |τ_i| ≥ the k-th largest |τ_i| of the tensor, k = ⌈density·n⌉, else 0
       (entries tied with the threshold are all kept, so a few more than k may survive);
    2. elect: s = sgn(w_V·τ̂_V + w_L·τ̂_L) per element (+ when 0), w_V = 1−α, w_L = α;
    3. disjoint merge: m = Σ_{i: sgn τ̂_i = s} w_i·τ̂_i, divided (normalize = 1, the default) by
       Σ_{i: sgn τ̂_i = s} w_i — a weighted mean of the agreeing, surviving entries; 0 where none;
    θ = θ_B + λ·m.

    With normalize = 1, where only one task vector survives (or agrees), m is that vector at full
    size whatever its weight: e.g. with the VLM as its own base (τ_V = 0), θ = θ_V + λ·τ̂_L for
    every α > 0. With normalize = 0, density = 1, and task vectors that never disagree in sign
    (zeros allowed), TIES is exactly task_arithmetic with the same λ; with normalize = 1 that also
    holds where both task vectors are nonzero (the weights sum to 1).
    """
    density, lam, normalize = _args(params, TIES_DENSITY, LAMBDA, TIES_NORMALIZE)
    base = _require_base(base, "ties")
    thresholds = [_magnitude_threshold(x, base, density) for x in (vlm, donor)]

    def trim(i: int, tau: Tensor) -> Tensor:
        return tau.masked_fill_(tau.abs() < thresholds[i], 0.0) if thresholds[i] > 0 else tau

    _task_vector_merge(out, vlm, donor, base, alpha, lam, sparsify=trim, consensus=True,
                       normalize=bool(normalize))


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _name_hash(name: str) -> int:
    """FNV-1a, 64 bit, of the UTF-8 name: a fixed value in every process (unlike Python's hash())."""
    h = 0xCBF29CE484222325
    for byte in name.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _dare_stream_seed(seed: int, shape: tuple[int, ...], stream: int, name: Optional[str] = None) -> int:
    """A fixed 64-bit mix of (seed, which task vector, shape, tensor name): same in every process.

    The engine passes the tensor's decoder-relative name, so every tensor draws its own mask; called
    without a name (directly, in tests), same-shaped tensors share one. The VLM's (stream 0) and the
    donor's (stream 1) masks are independent.
    """
    h = 0
    for value in (seed, stream, len(shape), *shape):
        h = _splitmix64(h ^ value)
    if name is not None:
        h = _splitmix64(h ^ _name_hash(name))
    return h


def _dare_drop(density: float, seed: int, like: Tensor, name: Optional[str] = None) -> Optional[Sparsify]:
    """DARE (Yu et al. 2023): keep each entry with probability `density`, scale kept ones ×1/density.

    The 1/density rescale (FusionBench's, the paper's 1/(1−p)) keeps E[τ̂] = τ per entry; mergekit's
    `rescale` instead scales the masked vector to the original's L1 norm. The mask is drawn as
    U[0,1) < density from one torch.Generator per task vector, on `like`'s device, chunk after
    chunk: deterministic for a seed and device type (CPU and CUDA generators give different masks).
    """
    if density >= 1:
        return None  # every entry kept, scale 1
    generators = []
    for stream in (0, 1):
        gen = torch.Generator(device=like.device)
        gen.manual_seed(_dare_stream_seed(seed, tuple(like.shape), stream, name))
        generators.append(gen)

    def drop(i: int, tau: Tensor) -> Tensor:
        keep = torch.rand(tau.shape, generator=generators[i], device=tau.device) < density
        return tau.mul_(keep).div_(density)

    return drop


def dare_linear(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, *,
                name: Optional[str] = None, **params) -> None:
    """θ = θ_B + λ·[(1−α)·τ̂_V + α·τ̂_L], τ̂_i = m_i ⊙ τ_i / density, m_i ~ Bernoulli(density), seeded
    by (seed, tensor name)."""
    density, lam, seed = _args(params, DARE_DENSITY, LAMBDA, SEED)
    base = _require_base(base, "dare_linear")
    _task_vector_merge(out, vlm, donor, base, alpha, lam, sparsify=_dare_drop(density, seed, out, name))


def dare_ties(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, *,
              name: Optional[str] = None, **params) -> None:
    """DARE's drop and rescale (as dare_linear), then TIES' sign election and disjoint merge (as ties,
    without its magnitude trim); `normalize` defaults to 0, mergekit's dare_ties default."""
    density, lam, seed, normalize = _args(params, DARE_DENSITY, LAMBDA, SEED, DARE_TIES_NORMALIZE)
    base = _require_base(base, "dare_ties")
    _task_vector_merge(out, vlm, donor, base, alpha, lam, sparsify=_dare_drop(density, seed, out, name),
                       consensus=True, normalize=bool(normalize))


register(Method("task_arithmetic", task_arithmetic,
                "θ = θ_B + λ·[(1−α)·(θ_V − θ_B) + α·(θ_L − θ_B)]", (LAMBDA,), needs_base=True))
register(Method("ties", ties,
                "τ̂_i = top-density |θ_i − θ_B|; s = sgn Σ w_i·τ̂_i; θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i "
                "[/ Σ_{sgn τ̂_i = s} w_i if normalize]; w = (1−α, α)",
                (TIES_DENSITY, LAMBDA, TIES_NORMALIZE), needs_base=True))
register(Method("dare_linear", dare_linear,
                "τ̂_i = m_i ⊙ (θ_i − θ_B) / density, m_i ~ Bernoulli(density); θ = θ_B + λ·[(1−α)·τ̂_V + α·τ̂_L]",
                (DARE_DENSITY, LAMBDA, SEED), needs_base=True, context=("name",)))
register(Method("dare_ties", dare_ties,
                "τ̂_i = m_i ⊙ (θ_i − θ_B) / density; s = sgn Σ w_i·τ̂_i; θ = θ_B + λ·Σ_{sgn τ̂_i = s} w_i·τ̂_i "
                "[/ Σ_{sgn τ̂_i = s} w_i if normalize]; w = (1−α, α)",
                (DARE_DENSITY, LAMBDA, SEED, DARE_TIES_NORMALIZE), needs_base=True, context=("name",)))


# -- RegMean ----------------------------------------------------------------------------------------
def regmean_solve(weights: list[Tensor], grams: list[Tensor], coeffs: list[float], gamma: float) -> Tensor:
    """RegMean's merged weight of one linear layer y = x·Wᵀ, in float64:

        G̃_i = γ·G_i + (1−γ)·diag(G_i)        (γ scales the off-diagonal; γ = 1: plain RegMean)
        W   = [(Σ_i c_i·G̃_i)⁻¹ · Σ_i c_i·G̃_i·W_iᵀ]ᵀ

    Shapes: W_i [out, in], G_i = X_iᵀX_i (/N_i) [in, in] of that layer's inputs X_i [N_i, in];
    returns [out, in]. With γ = 1 this minimises Σ_i c_i·‖X_i·Wᵀ − X_i·W_iᵀ‖². Solved with
    torch.linalg.solve (no explicit inverse); the caller casts to the parameter's dtype. Scratch, on
    the inputs' device: three [in, in] float64 matrices (Σ c_i·G̃_i, one G̃_i, the solver's LU copy)
    plus [in, out] ones — 98 MiB each for a 7B model's attention (in = 3584), 2.7 GiB each for its
    down_proj (in = 18944). A singular Σ c_i·G̃_i (an input feature that is zero on every sample)
    is regularised with 1e-9·mean(diag) on the diagonal.
    """
    if not weights or not len(weights) == len(grams) == len(coeffs):
        raise ValueError(f"regmean_solve: need as many weights, grams and coeffs (≥ 1), got "
                         f"{len(weights)}, {len(grams)}, {len(coeffs)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"regmean_solve: gamma={gamma} is outside [0, 1]")
    lhs = rhs = None  # Σ c_i·G̃_i [in, in], Σ c_i·G̃_i·W_iᵀ [in, out]
    for w, g, c in zip(weights, grams, coeffs):
        if g.shape != (w.shape[1], w.shape[1]):
            raise ValueError(f"regmean_solve: Gram {list(g.shape)} does not fit a weight {list(w.shape)}")
        g_tilde = g.to(torch.float64, copy=True)  # never edit the caller's (memory-mapped) Gram
        diagonal = torch.diagonal(g_tilde).clone()
        g_tilde.mul_(gamma)
        torch.diagonal(g_tilde).copy_(diagonal)  # γ·G off the diagonal, G_ii on it
        term_r = (g_tilde @ w.to(torch.float64).T).mul_(c)
        rhs = term_r if rhs is None else rhs.add_(term_r)
        lhs = g_tilde.mul_(c) if lhs is None else lhs.add_(g_tilde, alpha=c)
        del g_tilde, term_r
    try:
        return torch.linalg.solve(lhs, rhs).T.contiguous()
    except torch.linalg.LinAlgError:
        ridge = 1e-9 * torch.diagonal(lhs).abs().mean().clamp_min(1e-30)
        torch.diagonal(lhs).add_(ridge)
        return torch.linalg.solve(lhs, rhs).T.contiguous()


GAMMA = ParamDef("gamma", float, 0.9, 0.0, 1.0,
                 "scale of the Gram matrices' off-diagonal: 1 = plain RegMean, 0 = a per-input-feature "
                 "weighted mean; values below 1 regularise towards the weighted mean")


def regmean(out: Tensor, vlm: Tensor, donor: Tensor, base: Optional[Tensor], alpha: float, *,
            grams: Optional[tuple[Tensor, Tensor]] = None, **params) -> None:
    """RegMean (Jin et al. 2023) with weights (1−α, α): for a linear layer's weight,
    W = (Σ_i c_i·G̃_i)⁻¹·Σ_i c_i·G̃_i·W_i (see `regmean_solve`), G_V / G_L the Gram matrices of that
    layer's inputs in the VLM (on image + question samples) and the donor (on text).

    Tensors that are not a linear layer's weight — norms, embeddings, biases — come with grams=None
    and are merged linearly, as are α = 0 and α = 1 (the endpoints, exactly).
    """
    (gamma,) = _args(params, GAMMA)
    if grams is None or alpha == 0 or alpha == 1:
        linear(out, vlm, donor, base, alpha)
        return
    g_vlm, g_donor = grams
    out.copy_(regmean_solve([vlm, donor], [g_vlm, g_donor], [1.0 - alpha, alpha], gamma))


register(Method("regmean", regmean,
                "linear layers: W = (Σ_i c_i·G̃_i)⁻¹·Σ_i c_i·G̃_i·W_i, c = (1−α, α), G̃ = γ·G + (1−γ)·diag(G), "
                "G = XᵀX/N of each model's own layer inputs (needs Gram files: `python -m merging grams`); "
                "other tensors: linear",
                (GAMMA,), context=("grams",)))


def methods_table() -> str:
    """The README's methods table, generated from the registry (a test keeps the README in sync)."""
    lines = ["| method | needs base | formula | parameters |", "|---|---|---|---|"]
    for m in REGISTRY.values():
        params = "; ".join(f"`{p.name}` (default {p.default}): {p.doc}" for p in m.params) or "–"
        lines.append(f"| `{m.name}` | {'yes' if m.needs_base else 'no'} | {m.formula} | {params} |")
    return "\n".join(lines)
