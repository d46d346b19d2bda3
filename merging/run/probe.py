"""See the merge: the model's next-token distribution at the first answer position, its distance to the
base VLM's (KL, nats), and plans scaled along α or built from per-group curves.

The distribution is read where greedy decoding picks the answer's first token: the logits at the last
prompt position (after the chat template's assistant header), so its top-1 is that token. What the
answer cache stores is a `summarize` of it — the `TOP_STORED` most probable tokens and the rest mass —
not the full vocabulary. Callers hold the engine's lock around the forward passes, as for `answer`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from PIL import Image

from merging.plan import curves
from merging.errors import MergescopeError, PlanError
from merging.run.generate import build_inputs, text_tokenizer
from merging.model.pair import ModelPair
from merging.plan.merge_plan import MergePlan

# Stored tokens per summary: more than the toy pair's 400-token vocabulary, so its KL is exact.
TOP_STORED = 512

# Per-group curves (the UI's ticks) → the plan components each group stands for.
GROUP_COMPONENTS: dict[str, tuple[str, ...]] = {
    "Attention": ("self_attn",),
    "MLP": ("mlp",),
    "Norms": ("norms",),
    "Embeddings/Head": ("embed_tokens", "lm_head", "norm"),
}


# -- the distribution -----------------------------------------------------------------------------
@torch.no_grad()
def first_token_logprobs(pair: ModelPair, question: str, image: Image.Image | None) -> torch.Tensor:
    """Log-softmax (natural log, float32, shape [vocab] on the CPU) of the logits at the first answer
    position, with whatever weights the VLM holds now; one forward pass. Raises MergescopeError for an
    empty or too long question or an image the model cannot read (as `build_inputs`)."""
    inputs = build_inputs(pair, question, image)
    logits = pair.vlm(**inputs).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1).cpu()


def first_token_id(pair: ModelPair, question: str, image: Image.Image | None, text: str) -> int:
    """The id of the first token of `text` as the tokenizer encodes it after the prompt (as a reference
    answer is teacher-forced); MergescopeError if `text` is empty or adds no token."""
    if not text.strip():
        raise MergescopeError("the gold answer is empty")
    prompt_len = build_inputs(pair, question, image)["input_ids"].shape[1]
    ids = build_inputs(pair, question, image, reference=text)["input_ids"][0]
    if ids.shape[0] <= prompt_len:
        raise MergescopeError(f"the gold answer {text!r} encodes to no token")
    return int(ids[prompt_len])


def token_decoder(pair: ModelPair) -> Callable[[int], str]:
    """id → the token's text as decoded alone (special tokens kept, e.g. '<|im_end|>')."""
    tokenizer = text_tokenizer(pair.processor)
    return lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)


def next_token_distribution(pair: ModelPair, question: str, image: Image.Image | None,
                            top_k: int = 10) -> list[tuple[str, float]]:
    """The `top_k` most probable first answer tokens [(token text, probability in [0, 1])], most
    probable first; the first is the greedy answer's first token. Probabilities are the float32
    softmax's (0.0 only where float32 underflows)."""
    logprobs = first_token_logprobs(pair, question, image)
    values, ids = torch.topk(logprobs, min(top_k, logprobs.shape[0]))
    decode = token_decoder(pair)
    return [(decode(int(i)), math.exp(float(v))) for v, i in zip(values, ids)]


def token_probability(pair: ModelPair, question: str, image: Image.Image | None, text: str) -> float:
    """Probability (in [0, 1]) that the answer starts with the first token of `text` (a gold answer)."""
    token_id = first_token_id(pair, question, image, text)
    return math.exp(float(first_token_logprobs(pair, question, image)[token_id]))


# -- the stored summary and KL --------------------------------------------------------------------
def summarize(logprobs: torch.Tensor, top: int = TOP_STORED,
              decode: Callable[[int], str] | None = None) -> dict[str, Any]:
    """The cacheable summary of a [vocab] log-softmax: {"top": [[token_id, token_text, p], ...] for the
    min(vocab, `top`) most probable tokens, most probable first; "rest": the probability of all other
    tokens (0.0 when `top` ≥ vocab); "vocab": the vocabulary size}. p is exp of the log-probability
    in float64, so it is > 0 wherever the log-probability is finite; "rest" is summed the same way
    (logsumexp), not as 1 − Σp, so it carries no rounding error of its own. `decode` gives the token's
    text (default: "" — the id alone identifies it)."""
    logprobs = logprobs.detach().double().cpu()
    vocab = logprobs.shape[0]
    k = min(vocab, top)
    values, ids = torch.topk(logprobs, k)
    decode = decode or (lambda token_id: "")
    rows = [[int(i), decode(int(i)), math.exp(float(v))] for v, i in zip(values, ids)]
    rest = 0.0
    if k < vocab:
        mask = torch.ones(vocab, dtype=torch.bool)
        mask[ids] = False
        rest = math.exp(float(torch.logsumexp(logprobs[mask], dim=0)))
    return {"top": rows, "rest": rest, "vocab": vocab}


def probability_of(summary: dict[str, Any], token_id: int) -> float | None:
    """The stored probability of `token_id`, or None if the summary does not list it."""
    return next((p for i, _, p in summary["top"] if i == token_id), None)


def kl_divergence(base: dict[str, Any], merged: dict[str, Any]) -> float:
    """KL(base ‖ merged) = Σ_x P(x)·ln(P(x)/Q(x)) in nats (≥ 0; Cover & Thomas, Elements of Information
    Theory, 2nd ed., eq. 2.26), from two `summarize` dicts of the same vocabulary.

    The sum runs over the tokens BOTH summaries list, plus one bucket holding everything else, whose
    mass in each distribution is its "rest" plus what it lists of the tokens the other does not — a
    partition of the vocabulary whose cells' masses are all known exactly. So the result is exact
    when both stored sets cover the vocabulary (as on the toy pair: TOP_STORED = 512 > 400 tokens),
    and otherwise the KL of a coarse-graining of P and Q, a lower bound on the true KL by the log-sum
    inequality (data-processing inequality; Cover & Thomas, Thm 2.7.1 and §2.8). A cell with P > 0 and
    Q = 0 gives inf; a result below 0 by float rounding is 0. Raises ValueError for different vocabularies.
    """
    if base["vocab"] != merged["vocab"]:
        raise ValueError(f"the summaries are of different vocabularies ({base['vocab']} vs {merged['vocab']})")
    p = {i: prob for i, _, prob in base["top"]}
    q = {i: prob for i, _, prob in merged["top"]}
    shared = p.keys() & q.keys()
    total = sum(_term(p[i], q[i]) for i in shared)
    if len(shared) < base["vocab"]:  # the bucket: the rest, and what only one side lists
        total += _term(math.fsum([base["rest"]] + [p[i] for i in p.keys() - shared]),
                       math.fsum([merged["rest"]] + [q[i] for i in q.keys() - shared]))
    return max(0.0, total)


def _term(p: float, q: float) -> float:
    if p <= 0.0:
        return 0.0
    return math.inf if q <= 0.0 else p * math.log(p / q)


# -- plans ------------------------------------------------------------------------------------------
def scale_plan(plan: MergePlan, alpha: float, num_layers: int) -> MergePlan:
    """`plan` with every rule's curve scaled by one factor so that the largest α over all rules, layers
    and non-layer tensors becomes `alpha`; components, method and params are kept, and each curve's
    shape (the ratios between its layers) too. Curves become `custom` (one α per layer) with an explicit
    `non_layer`. A plan whose α is 0 everywhere has no shape to keep: each of its rules becomes the
    constant `alpha`. `alpha` = 0 gives the empty plan (the base VLM's weights, and its cached answers);
    the empty plan stays empty. Raises PlanError for `alpha` outside [0, 1] or a curve that does not fit
    `num_layers` (custom of another length)."""
    alpha = curves.check_alpha(alpha, "alpha")
    if alpha == 0.0 or not plan.rules:
        return MergePlan()
    per_rule = []
    for i, rule in enumerate(plan.rules):
        try:
            alphas = curves.layer_alphas(rule.curve, num_layers)
        except PlanError as exc:
            raise PlanError(f"rules[{i}].curve: {exc}") from None
        per_rule.append((rule, alphas, curves.non_layer_alpha(rule.curve, alphas)))
    top = max(max(alphas + [non_layer]) for _, alphas, non_layer in per_rule)

    def scaled(a: float) -> float:  # a / top is exactly 1 at the maximum, so the maximum is exactly alpha
        return alpha if top == 0.0 else min(1.0, alpha * (a / top))

    rules = [dict(rule.to_dict(), curve={"preset": "custom", "values": [scaled(a) for a in alphas],
                                         "non_layer": scaled(non_layer)})
             for rule, alphas, non_layer in per_rule]
    return MergePlan.from_dict({"rules": rules})


def group_plan(groups: dict[str, dict], method: str = "linear", params: dict | None = None) -> MergePlan:
    """One rule per ticked group, `groups` mapping a group name of GROUP_COMPONENTS ("Attention",
    "MLP", "Norms", "Embeddings/Head") to its curve (a curve spec as in a plan file; None: unticked),
    all merged by `method` with `params`. Rules come in GROUP_COMPONENTS order whatever the dict's
    order, so the same ticks give the same plan (and hash). Raises PlanError for an unknown group, a
    bad curve, method or params."""
    unknown = sorted(set(groups) - set(GROUP_COMPONENTS))
    if unknown:
        raise PlanError(f"unknown group(s) {unknown}; choose from {list(GROUP_COMPONENTS)}")
    rules = [{"components": list(components), "method": method, "curve": groups[name], "params": dict(params or {})}
             for name, components in GROUP_COMPONENTS.items() if groups.get(name) is not None]
    return MergePlan.from_dict({"rules": rules})
