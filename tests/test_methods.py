"""Merge methods on real tensors: each formula against an independent direct computation, exact
endpoints, slerp's fallbacks, TIES' and DARE's semantics, RegMean's closed form, parameter
validation, and the engine with a base model (refusal without one, history independence)."""

import math

import pytest
import torch

from conftest import assert_same_weights, lm_state
from merging import MergeEngine, MergePlan, PlanError, load_pair
from merging.methods import dare, registry
from merging.methods import (REGISTRY, Method, dare_linear, dare_ties, linear, regmean, regmean_solve, slerp,
                             task_arithmetic, ties)


# -- helpers -------------------------------------------------------------------------------------
def randn(*shape, seed, scale=1.0, dtype=torch.float32):
    return (scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def triple(shape=(37, 53), seed=0):
    """(θ_V, θ_L, θ_B): two fine-tunes of one base, as in a shared-seed pair."""
    base = randn(*shape, seed=seed)
    return base + randn(*shape, seed=seed + 1, scale=0.1), base + randn(*shape, seed=seed + 2, scale=0.1), base


def run(fn, vlm, donor, base=None, alpha=0.5, **params):
    """Call a method as the engine does, into a fresh `out`, and check it left its inputs alone."""
    inputs = [t for t in (vlm, donor, base) if t is not None]
    before = [t.clone() for t in inputs]
    out = torch.full_like(vlm, float("nan"))
    fn(out, vlm, donor, base, alpha, **params)
    assert all(torch.equal(t, b) for t, b in zip(inputs, before)), "a method modified its inputs"
    return out


def close(got, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(got.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many chunks on small tensors, so chunked accumulation and streaming are exercised."""
    monkeypatch.setattr(registry, "CHUNK_ELEMENTS", 257)


# -- linear and slerp ----------------------------------------------------------------------------
def slerp_reference(v, d, alpha):
    v64, d64 = v.double().flatten(), d.double().flatten()
    cos = torch.dot(v64 / v64.norm(), d64 / d64.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    merged = (torch.sin((1 - alpha) * omega) * v64 + torch.sin(alpha * omega) * d64) / torch.sin(omega)
    return merged.reshape(v.shape)


@pytest.mark.parametrize("fn", [linear, slerp])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                    (torch.bfloat16, torch.float32)])
def test_alpha_0_and_1_give_the_endpoints_bit_exactly(fn, dtypes):
    vlm_dtype, donor_dtype = dtypes
    # large θ_V and tiny θ_L: θ_V + 1·(θ_L − θ_V) does not round back to θ_L in floating point
    vlm = randn(64, 48, seed=1, scale=1e3, dtype=vlm_dtype)
    donor = randn(64, 48, seed=2, scale=1e-3, dtype=donor_dtype)
    assert torch.equal(run(fn, vlm, donor, alpha=0.0), vlm)
    assert torch.equal(run(fn, vlm, donor, alpha=1.0), donor.to(vlm_dtype))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.83])
def test_slerp_matches_the_formula(small_chunks, alpha):
    vlm, donor = randn(37, 53, seed=3), randn(37, 53, seed=4) + 0.5 * randn(37, 53, seed=3)
    close(run(slerp, vlm, donor, alpha=alpha), slerp_reference(vlm, donor, alpha))
    # bf16 in and out: fp32 arithmetic rounded once, so within a bf16 step of the exact value
    v16, d16 = vlm.bfloat16(), donor.bfloat16()
    close(run(slerp, v16, d16, alpha=alpha), slerp_reference(v16, d16, alpha), rtol=8e-3, atol=1e-3)


def test_slerp_of_orthogonal_unit_vectors_stays_on_the_sphere():
    e1, e2 = torch.zeros(2, 3), torch.zeros(2, 3)
    e1[0, 0], e2[1, 2] = 1.0, 1.0
    half = run(slerp, e1, e2, alpha=0.5)
    assert half.norm().item() == pytest.approx(1.0, abs=1e-6)
    close(half, (e1 + e2) / math.sqrt(2))
    for alpha in (0.2, 0.7):  # the whole arc has norm 1 (a linear blend would dip to 1/√2)
        assert run(slerp, e1, e2, alpha=alpha).norm().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("donor_of", [lambda v: 2 * v, lambda v: -v, lambda v: torch.zeros_like(v)],
                         ids=["collinear", "anti-collinear", "zero-norm"])
def test_slerp_falls_back_to_linear(donor_of):
    vlm = randn(16, 24, seed=5)
    donor = donor_of(vlm)
    got = run(slerp, vlm, donor, alpha=0.3)
    assert torch.equal(got, run(linear, vlm, donor, alpha=0.3))
    close(got, vlm.double() + 0.3 * (donor.double() - vlm.double()))
    # and with a zero VLM tensor
    assert torch.equal(run(slerp, donor, vlm, alpha=0.3), run(linear, donor, vlm, alpha=0.3))


@pytest.mark.parametrize("fn,base", [(linear, False), (slerp, False), (task_arithmetic, True), (ties, True),
                                     (dare_linear, True), (dare_ties, True)])
def test_methods_are_deterministic_and_write_only_out(fn, base):
    vlm, donor, theta_b = triple(seed=30)
    first = run(fn, vlm, donor, theta_b if base else None, alpha=0.4)
    assert torch.equal(first, run(fn, vlm, donor, theta_b if base else None, alpha=0.4))
    assert not first.isnan().any()


# -- task arithmetic -----------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [1.0, 0.5, 2.5])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_task_arithmetic_matches_the_formula(small_chunks, lam, alpha):
    vlm, donor, base = triple(seed=6)
    v, d, b = vlm.double(), donor.double(), base.double()
    expected = b + lam * ((1 - alpha) * (v - b) + alpha * (d - b))
    close(run(task_arithmetic, vlm, donor, base, alpha, **{"lambda": lam}), expected)


def test_task_arithmetic_at_lambda_1_is_linear_interpolation_whatever_the_base():
    vlm, donor, _ = triple(seed=7)
    for base in (randn(37, 53, seed=8), vlm):
        close(run(task_arithmetic, vlm, donor, base, 0.35), run(linear, vlm, donor, alpha=0.35))
    # with the VLM as its own base, bit-identical to linear's fp32 path
    assert torch.equal(run(task_arithmetic, vlm, donor, vlm, 0.35), run(linear, vlm, donor, alpha=0.35))
    assert run(task_arithmetic, vlm, donor, vlm, 0.35).dtype == torch.float32


def test_task_vector_methods_cast_once_into_outs_dtype():
    vlm, donor, base = triple(seed=9)
    v16 = vlm.bfloat16()
    got = run(task_arithmetic, v16, donor, base, 0.3, **{"lambda": 1.5})  # donor, base in fp32
    v, d, b = v16.float(), donor, base
    expected = (b + 1.5 * ((1 - 0.3) * (v - b) + 0.3 * (d - b))).bfloat16()
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= 2 ** -7 * expected.float().abs().max()


# -- TIES ----------------------------------------------------------------------------------------
def ties_reference(vlm, donor, base, alpha, density=1.0, lam=1.0, normalize=1, masks=None, rescale=1.0):
    """TIES written out elementwise in float64 (τ rounded in fp32 first, as the method computes it).

    Trim: keep the k = ⌈density·n⌉ largest |τ| by a full sort; or, for DARE, apply `masks` and
    scale by `rescale`. Then sign election and disjoint (weighted-mean if normalize) merge.
    """
    taus = [(x.float() - base.float()).double().flatten() for x in (vlm, donor)]
    if masks is None:
        masks = []
        for tau in taus:
            keep = torch.zeros(tau.numel(), dtype=torch.bool)
            keep[tau.abs().argsort(descending=True)[:math.ceil(density * tau.numel())]] = True
            masks.append(keep)
    weights = [1 - alpha, alpha]
    weighted = [w * torch.where(m.flatten(), tau * rescale, 0.0) for w, m, tau in zip(weights, masks, taus)]
    elected = torch.where(weighted[0] + weighted[1] >= 0, 1.0, -1.0)
    agree = [torch.sign(x) == elected for x in weighted]
    total = sum(torch.where(a, x, 0.0) for a, x in zip(agree, weighted))
    if normalize:
        divisor = sum(a.double() * w for a, w in zip(agree, weights))
        total = torch.where(divisor > 0, total / torch.where(divisor > 0, divisor, 1.0), 0.0)
    return (base.double().flatten() + lam * total).reshape(vlm.shape)


@pytest.mark.parametrize("density,alpha,lam,normalize", [
    (0.2, 0.3, 1.0, 1), (0.2, 0.8, 1.0, 0), (0.5, 0.5, 1.5, 1), (0.05, 0.6, 0.7, 0), (1.0, 0.4, 1.0, 1)])
def test_ties_matches_the_formula(small_chunks, density, alpha, lam, normalize):
    vlm, donor, base = triple(seed=10)
    got = run(ties, vlm, donor, base, alpha, density=density, **{"lambda": lam}, normalize=normalize)
    close(got, ties_reference(vlm, donor, base, alpha, density, lam, normalize))


def test_ties_keeps_the_top_density_fraction_by_magnitude():
    vlm, donor, base = triple(seed=11)
    n = vlm.numel()
    for density in (0.01, 0.2, 0.7):
        # α = 1, normalize 0, λ = 1: θ − θ_B is the donor's trimmed task vector itself
        tau = donor - base
        got = run(ties, vlm, donor, base, 1.0, density=density, normalize=0) - base
        kept = got != 0
        assert kept.sum().item() == math.ceil(density * n)
        assert tau.abs()[kept].min() >= tau.abs()[~kept].max()  # the largest magnitudes survive
        assert torch.equal(got[kept], tau[kept])


def test_ties_at_density_1_equals_task_arithmetic_when_signs_agree():
    """The documented parameterisation: density = 1, task vectors that never disagree in sign.
    normalize = 0 (a plain sum) holds with zeros too; normalize = 1 needs both nonzero (Σw = 1)."""
    vlm, _, base = triple(seed=12)
    tau_v = vlm - base
    donor = base + tau_v.sign() * randn(37, 53, seed=13, scale=0.1).abs()  # same signs as τ_V
    for alpha, lam in [(0.3, 1.0), (0.7, 1.3), (0.5, 2.0)]:
        expected = run(task_arithmetic, vlm, donor, base, alpha, **{"lambda": lam})
        for normalize in (0, 1):
            got = run(ties, vlm, donor, base, alpha, density=1.0, normalize=normalize, **{"lambda": lam})
            close(got, expected)
    # zeros in one task vector: normalize = 0 still equals task arithmetic ...
    donor_sparse = torch.where(torch.arange(vlm.numel()).reshape(vlm.shape) % 3 == 0, base, donor)
    expected = run(task_arithmetic, vlm, donor_sparse, base, 0.4)
    close(run(ties, vlm, donor_sparse, base, 0.4, density=1.0, normalize=0), expected)
    # ... while normalize = 1 there takes the surviving vector at full size (a mean over one entry)
    got = run(ties, vlm, donor_sparse, base, 0.4, density=1.0, normalize=1)
    only_v = donor_sparse == base
    close(got[only_v], vlm[only_v])


def test_ties_drops_the_minority_sign():
    base = torch.zeros(6)
    vlm = torch.tensor([1.0, -1.0, 2.0, 0.5, 1.0, 0.0])
    donor = torch.tensor([-3.0, -1.0, -1.0, 0.5, -1.0, 0.0])
    got = run(ties, vlm, donor, base, 0.5, density=1.0, normalize=0)
    # weighted: V = [.5, -.5, 1, .25, .5, 0], L = [-1.5, -.5, -.5, .25, -.5, 0];
    # elected sign: [-, -, +, +, + (a tie goes to +, as in mergekit), +]; nothing agrees in the last
    assert got.tolist() == [-1.5, -1.0, 1.0, 0.5, 0.5, 0.0]
    got = run(ties, vlm, donor, base, 0.5, density=1.0, normalize=1)
    assert got.tolist() == [-3.0, -1.0, 2.0, 0.5, 1.0, 0.0]


def test_ties_with_the_vlm_as_its_own_base_ignores_alpha_when_normalized():
    """Documented: τ_V = 0, so only the donor's entries vote; normalize = 1 gives θ_V + λ·τ̂_L."""
    vlm, donor, _ = triple(seed=14)
    full = run(ties, vlm, donor, vlm, 1.0, density=0.3)
    for alpha in (0.1, 0.6):
        close(run(ties, vlm, donor, vlm, alpha, density=0.3), full)
    assert torch.equal(run(ties, vlm, donor, vlm, 0.0, density=0.3), vlm)


# -- DARE ----------------------------------------------------------------------------------------
def dare_masks(fn, vlm, donor, base, **params):
    """The two keep masks DARE drew, read off α = 0 (VLM only) and α = 1 (donor only) merges."""
    return [run(fn, vlm, donor, base, alpha, normalize=0, **params) != base if fn is dare_ties else
            run(fn, vlm, donor, base, alpha, **params) != base for alpha in (0.0, 1.0)]


@pytest.mark.parametrize("density,alpha,lam", [(0.5, 0.3, 1.0), (0.2, 0.7, 1.4)])
def test_dare_linear_and_dare_ties_match_the_formula(small_chunks, density, alpha, lam):
    vlm, donor, base = triple(seed=15)
    params = {"density": density, "seed": 7, "lambda": 1.0}
    m_v, m_l = dare_masks(dare_linear, vlm, donor, base, **params)
    ties_masks = dare_masks(dare_ties, vlm, donor, base, **params)
    assert torch.equal(m_v, ties_masks[0]) and torch.equal(m_l, ties_masks[1])  # the same draws
    tau_v, tau_l = (vlm.double() - base.double()), (donor.double() - base.double())
    params["lambda"] = lam
    expected = base.double() + lam * ((1 - alpha) * m_v * tau_v + alpha * m_l * tau_l) / density
    close(run(dare_linear, vlm, donor, base, alpha, **params), expected)
    for normalize in (0, 1):
        expected = ties_reference(vlm, donor, base, alpha, lam=lam, normalize=normalize, masks=[m_v, m_l],
                                  rescale=1 / density)
        close(run(dare_ties, vlm, donor, base, alpha, normalize=normalize, **params), expected)


def test_dare_is_seeded():
    vlm, donor, base = triple(seed=16)
    first = run(dare_linear, vlm, donor, base, 0.5, seed=3)
    assert torch.equal(first, run(dare_linear, vlm, donor, base, 0.5, seed=3))
    assert not torch.equal(first, run(dare_linear, vlm, donor, base, 0.5, seed=4))
    assert torch.equal(run(dare_ties, vlm, donor, base, 0.5, seed=3), run(dare_ties, vlm, donor, base, 0.5, seed=3))
    # the VLM's and the donor's masks are independent draws, even for identical task vectors
    m_v, m_l = dare_masks(dare_linear, vlm, vlm, base, seed=3)
    assert not torch.equal(m_v, m_l)
    # density 1 keeps everything: plain task arithmetic
    assert torch.equal(run(dare_linear, vlm, donor, base, 0.5, density=1.0), run(task_arithmetic, vlm, donor, base, 0.5))


def test_dare_masks_are_seeded_by_the_tensor_name():
    """The engine passes each tensor's decoder-relative name: same-shaped tensors get their own masks."""
    vlm, donor, base = triple(seed=21)
    for fn in (dare_linear, dare_ties):
        q0 = run(fn, vlm, donor, base, 1.0, name="layers.0.self_attn.q_proj.weight", seed=3)
        assert torch.equal(q0, run(fn, vlm, donor, base, 1.0, name="layers.0.self_attn.q_proj.weight", seed=3))
        q1 = run(fn, vlm, donor, base, 1.0, name="layers.1.self_attn.q_proj.weight", seed=3)
        kept0, kept1 = q0 != base, q1 != base
        assert not torch.equal(kept0, kept1)
        # independent draws: the masks overlap on about density² of the entries, not density
        assert (kept0 & kept1).float().mean().item() == pytest.approx(0.25, abs=0.05)
        # without a name (a direct call): the shape-only seed of before
        assert torch.equal(run(fn, vlm, donor, base, 1.0, seed=3), run(fn, vlm, donor, base, 1.0, seed=3))
        assert not torch.equal(run(fn, vlm, donor, base, 1.0, seed=3), q0)
    # the mix is a fixed function of the string, the same in every process (no Python hash())
    assert dare.name_hash("a") == 0xAF63DC4C8601EC8C  # FNV-1a 64 test vector
    assert dare.stream_seed(0, (2, 3), 1, "a") == dare.stream_seed(0, (2, 3), 1, "a")
    assert dare.stream_seed(0, (2, 3), 1, "a") != dare.stream_seed(0, (2, 3), 1, "b")


def test_dare_keeps_about_density_of_the_entries_rescaled():
    vlm, donor, base = triple((400, 500), seed=17)
    tau = donor - base
    for density in (0.1, 0.3, 0.9):
        got = run(dare_linear, vlm, donor, base, 1.0, density=density) - base
        kept = got != 0
        # 200 000 Bernoulli draws: the fraction's standard deviation is ≤ 0.0011
        assert kept.float().mean().item() == pytest.approx(density, abs=0.006)
        close(got[kept], tau[kept].double() / density)


def test_dare_preserves_the_task_vector_in_expectation():
    vlm, donor, base = triple((20, 30), seed=18)
    tau = (donor - base).double()
    seeds = 400
    mean = sum((run(dare_linear, vlm, donor, base, 1.0, density=0.5, seed=s) - base).double()
               for s in range(seeds)) / seeds
    # per entry Var = τ²(1−p)/p / seeds: relative L2 error ≈ √(1/400) = 0.05
    assert ((mean - tau).norm() / tau.norm()).item() < 0.1
    assert (mean.sum() / tau.sum()).item() == pytest.approx(1.0, abs=0.1)


# -- RegMean -------------------------------------------------------------------------------------
def test_regmean_solve_is_the_least_squares_merge():
    gen = torch.Generator().manual_seed(19)
    n_in, n_out = 12, 7
    xs = [torch.randn(50, n_in, generator=gen, dtype=torch.float64),
          torch.randn(80, n_in, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, n_in, dtype=torch.float64)]
    ws = [torch.randn(n_out, n_in, generator=gen) for _ in xs]
    coeffs = [0.3, 0.7]
    got = regmean_solve(ws, [x.T @ x for x in xs], coeffs, gamma=1.0)
    assert got.shape == (n_out, n_in) and got.dtype == torch.float64
    # argmin_W Σ c_i ‖X_i Wᵀ − X_i W_iᵀ‖²: the stacked, √c_i-weighted least-squares problem
    a = torch.cat([math.sqrt(c) * x for c, x in zip(coeffs, xs)])
    y = torch.cat([math.sqrt(c) * x @ w.double().T for c, x, w in zip(coeffs, xs, ws)])
    expected = torch.linalg.lstsq(a, y).solution.T
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_regmean_solve_gamma_0_is_a_per_input_weighted_mean():
    gen = torch.Generator().manual_seed(20)
    xs = [torch.randn(30, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    ws = [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in xs]
    got = regmean_solve(ws, grams, [0.4, 0.6], gamma=0.0)
    g = [torch.diagonal(gr) for gr in grams]  # column j: Σ c_i g_ij W_i[:, j] / Σ c_i g_ij
    torch.testing.assert_close(got, (0.4 * g[0] * ws[0] + 0.6 * g[1] * ws[1]) / (0.4 * g[0] + 0.6 * g[1]))
    same = regmean_solve([ws[0], ws[0]], grams, [0.5, 0.5], gamma=0.5)  # merging a weight with itself
    torch.testing.assert_close(same, ws[0])
    with pytest.raises(ValueError, match="as many"):
        regmean_solve(ws, grams[:1], [1.0], 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        regmean_solve([ws[0].T], grams[:1], [1.0], 1.0)


def test_regmean_solve_leaves_its_inputs_alone():
    gen = torch.Generator().manual_seed(22)
    grams = [torch.randn(6, 6, generator=gen, dtype=torch.float64) for _ in range(2)]
    grams = [g @ g.T + torch.eye(6, dtype=torch.float64) for g in grams]
    ws = [torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in grams]
    copies = [t.clone() for t in grams + ws]
    regmean_solve(ws, grams, [0.5, 0.5], gamma=0.7)
    assert all(torch.equal(a, b) for a, b in zip(grams + ws, copies))


def test_regmean_solve_regularises_a_singular_system():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    x[:, 3] = 0  # an input feature that never activates: G has a zero row and column
    ws = [torch.randn(2, 5, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in (1, 2)]
    got = regmean_solve(ws, [x.T @ x, x.T @ x], [0.5, 0.5], gamma=1.0)
    assert torch.isfinite(got).all()
    # on the features that do activate, still the least-squares merge
    torch.testing.assert_close(x @ got.T, x @ (0.5 * ws[0] + 0.5 * ws[1]).T)


def test_regmean_method():
    gen = torch.Generator().manual_seed(24)
    xs = [torch.randn(60, 8, generator=gen), 2 * torch.randn(90, 8, generator=gen)]
    grams = tuple(x.T @ x / x.shape[0] for x in xs)
    vlm, donor = randn(5, 8, seed=25), randn(5, 8, seed=26)
    for gamma in (1.0, 0.9, 0.0):
        got = run(regmean, vlm, donor, alpha=0.3, grams=grams, gamma=gamma)
        assert torch.equal(got, regmean_solve([vlm, donor], list(grams), [0.7, 0.3], gamma).float())
    assert torch.equal(run(regmean, vlm, donor, alpha=0.3, grams=grams),
                       run(regmean, vlm, donor, alpha=0.3, grams=grams, gamma=0.9))  # the default γ
    # endpoints exactly; tensors without Grams (norms, embeddings, biases) merged linearly
    assert torch.equal(run(regmean, vlm, donor, alpha=0.0, grams=grams), vlm)
    assert torch.equal(run(regmean, vlm, donor, alpha=1.0, grams=grams), donor)
    assert torch.equal(run(regmean, vlm, donor, alpha=0.3), run(linear, vlm, donor, alpha=0.3))
    # bf16 parameters: solved in float64, rounded once
    got = run(regmean, vlm.bfloat16(), donor.bfloat16(), alpha=0.3, grams=grams, gamma=1.0)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, regmean_solve([vlm.bfloat16(), donor.bfloat16()], list(grams), [0.7, 0.3], 1.0).bfloat16())


def test_methods_declare_the_context_they_take():
    assert REGISTRY["regmean"].needs_grams and not REGISTRY["regmean"].needs_base
    assert REGISTRY["dare_linear"].context == REGISTRY["dare_ties"].context == ("name",)
    assert not any(REGISTRY[m].context for m in ("linear", "slerp", "task_arithmetic", "ties"))
    with pytest.raises(ValueError, match=r"unknown context \['layer'\]"):
        Method("bad", linear, "θ", context=("layer",))


# -- declarations and plan validation ------------------------------------------------------------
def test_the_registry_declares_every_method():
    assert {"linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "regmean"} <= set(REGISTRY)
    for name in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
        assert REGISTRY[name].needs_base
    assert not REGISTRY["linear"].needs_base and not REGISTRY["slerp"].needs_base
    for method in REGISTRY.values():
        assert method.formula and all(p.doc for p in method.params)
        for p in method.params:  # every default passes its own check
            assert p.check(p.default, "default") == p.default


def plan_with(method, components=("mlp",), value=0.5, **params):
    return MergePlan.from_dict({"rules": [{"components": list(components), "method": method,
                                           "curve": {"preset": "constant", "value": value}, "params": params}]})


def test_plan_fills_method_defaults():
    assert plan_with("ties").rules[0].params == {"density": 0.2, "lambda": 1.0, "normalize": 1}
    assert plan_with("dare_ties").rules[0].params == {"density": 0.5, "lambda": 1.0, "seed": 0, "normalize": 0}
    assert plan_with("dare_linear", seed=9).rules[0].params == {"density": 0.5, "lambda": 1.0, "seed": 9}
    assert plan_with("task_arithmetic").rules[0].params == {"lambda": 1.0}
    assert plan_with("slerp").rules[0].params == {}
    assert plan_with("regmean").rules[0].params == {"gamma": 0.9}


@pytest.mark.parametrize("method,params,message", [
    ("ties", {"density": 0}, r"density=0.0 is outside \(0.0, 1.0\]"),
    ("dare_linear", {"density": 1.5}, r"density=1.5 is outside \(0.0, 1.0\]"),
    ("task_arithmetic", {"lambda": -1}, r"lambda=-1.0 is outside \[0.0, 3.0\]"),
    ("ties", {"dencity": 0.3}, r"method 'ties' has no parameter\(s\) \['dencity'\]; it takes \['density', 'lambda', 'normalize'\]"),
    ("slerp", {"lambda": 1.0}, r"method 'slerp' has no parameter\(s\) \['lambda'\]; it takes none"),
    ("dare_ties", {"seed": 1.5}, r"seed must be int"),
    ("dare_ties", {"seed": -1}, r"seed=-1 is outside"),
    ("ties", {"normalize": 2}, r"normalize=2 is outside \[0, 1\]"),
    ("ties", {"density": "high"}, r"density must be float"),
    ("dare_ties", {"density": 0.0}, r"density=0.0 is outside \(0.0, 1.0\]"),
    ("regmean", {"gamma": -0.1}, r"gamma=-0.1 is outside \[0.0, 1.0\]"),
])
def test_bad_params_are_refused_with_a_clear_message(method, params, message):
    with pytest.raises(PlanError, match=message):
        plan_with(method, **params)


# -- in the engine -------------------------------------------------------------------------------
@pytest.fixture
def based_pair(qwen_dirs):
    """The tiny Qwen pair with the VLM as its own base: τ_V = 0."""
    vlm_dir, llm_dir = qwen_dirs
    return load_pair(vlm_dir, llm_dir, base=vlm_dir)


def test_a_method_needing_a_base_refuses_without_one(qwen_pair, qwen_engine):
    good = plan_with("linear", ["self_attn"], 0.3)
    qwen_engine.apply(good)
    before = lm_state(qwen_pair)
    with pytest.raises(PlanError, match="needs a base model"):
        qwen_engine.apply(plan_with("ties"))
    assert_same_weights(qwen_pair, before)
    assert qwen_engine.plan == good


def test_task_arithmetic_with_the_vlm_as_base_equals_linear(based_pair):
    engine = MergeEngine(based_pair)
    curve = {"preset": "linear", "start": 0.1, "end": 0.9}
    engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"], "method": "task_arithmetic",
                                                 "curve": curve}]}))
    merged = lm_state(based_pair)
    engine.apply(MergePlan.from_dict({"rules": [{"components": ["all"], "method": "linear", "curve": curve}]}))
    expected = lm_state(based_pair)
    assert sum(not torch.equal(merged[n], based_pair.vlm_files.get(s.vlm_key))
               for n, s in zip(merged, based_pair.layout.slots)) > 0  # it did merge something
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name], rtol=2e-7, atol=1e-8)


def test_mixed_methods_in_one_plan_and_bit_exact_restore(qwen_pair, qwen_engine):
    before = lm_state(qwen_pair)
    qwen_engine.apply(MergePlan.from_dict({"rules": [
        {"components": ["self_attn"], "method": "slerp", "curve": {"preset": "linear", "start": 0.2, "end": 0.8}},
        {"components": ["mlp"], "method": "linear", "curve": {"preset": "constant", "value": 0.4}}]}))
    params = dict(qwen_pair.vlm.named_parameters())
    L = qwen_pair.layout.num_layers
    seen = set()
    for slot in qwen_pair.layout.slots:
        original, donor = qwen_pair.vlm_files.get(slot.vlm_key), qwen_pair.donor.get(slot.donor_key)
        if slot.group == "self_attn":
            expected = run(slerp, original, donor, alpha=0.2 + 0.6 * slot.layer / (L - 1))
        elif slot.group == "mlp":
            expected = run(linear, original, donor, alpha=0.4)
        else:
            expected = original
        assert torch.equal(params[slot.name], expected), slot.name
        seen.add(slot.group)
    assert {"self_attn", "mlp"} <= seen
    qwen_engine.restore()
    assert_same_weights(qwen_pair, before)


def test_history_independence_with_base_methods(based_pair):
    engine = MergeEngine(based_pair)
    curve = {"preset": "linear", "start": 0.2, "end": 0.9}
    plans = [
        MergePlan.from_dict({"rules": [{"components": ["mlp"], "method": "dare_ties", "curve": curve,
                                        "params": {"seed": 3, "density": 0.3}},
                                       {"components": ["self_attn"], "method": "slerp", "curve": curve}]}),
        MergePlan.from_dict({"rules": [{"components": ["all"], "method": "dare_linear", "curve": curve,
                                        "params": {"seed": 5}}]}),
        MergePlan.from_dict({"rules": [{"components": ["mlp", "q_proj"], "method": "ties", "curve": curve,
                                        "params": {"density": 0.4, "lambda": 1.5}}]}),
        MergePlan.from_dict({"rules": [{"components": ["all"], "method": "task_arithmetic", "curve": curve,
                                        "params": {"lambda": 0.5}}]}),
    ]
    reference = {}
    for p in plans:
        engine.restore()
        engine.apply(p)
        reference[p.hash()] = lm_state(based_pair)
    assert len({tuple(t.sum().item() for t in state.values()) for state in reference.values()}) == len(plans)
    for p in plans[::-1] + plans + [plans[0], plans[0]]:  # from other states, and twice in a row
        engine.apply(p)
        assert_same_weights(based_pair, reference[p.hash()])


def test_readme_methods_table_matches_the_registry():
    from pathlib import Path

    from merging.methods import methods_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert methods_table() in readme, "regenerate the README table: python -c 'from merging.methods import methods_table; print(methods_table())'"


def test_the_readme_example_method_is_one_decorated_function():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Adding a merge method"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", section.index("```python"))]
    exec(compile(code, "README.md", "exec"), {})
    try:
        method = REGISTRY["scaled_linear"]
        vlm, donor, _ = triple()
        assert torch.equal(run(method.fn, vlm, donor, alpha=0.3), run(linear, vlm, donor, alpha=0.3))
        assert method.params[0].name == "scale" and "scale" in method.formula
        assert MergePlan.from_dict({"rules": [{"components": ["all"], "method": "scaled_linear",
                                               "curve": {"preset": "constant", "value": 0.5}}]}).rules
    finally:
        del REGISTRY["scaled_linear"]
