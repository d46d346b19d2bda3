"""Whole-answer divergence: how far a merge moved the model along its whole answer, not just its first token.

The first-token distribution (merging.run.probe) can call a collapsed answer ("redredredbottom…") barely
moved: its first token is still the base VLM's. Here the merged model's answer is teacher-forced through
the base VLM and through the merge; at each of its tokens we read both models' log-probability of that
token and KL(base ‖ merged) of their full next-token distributions. Where the merge repeats itself the
base VLM would have stopped, so both the base log-probability and the KL show the collapse.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from merging.model.pair import ModelPair
from merging.run.generate import build_inputs, text_tokenizer


@torch.no_grad()
def answer_logprobs(pair: ModelPair, question: str, image: Image.Image | None, text: str) -> torch.Tensor:
    """Log-softmax (natural log, float32, CPU) of the next-token logits at each position of `text` taken as
    the answer (teacher forcing): shape [tokens of `text`, vocab], row t the distribution `text`'s token t
    was drawn from, with whatever weights the VLM holds now. An empty `text` gives shape [0, vocab].
    Raises MergescopeError for a bad question or image (as `build_inputs`)."""
    prompt_len = build_inputs(pair, question, image)["input_ids"].shape[1]
    inputs = build_inputs(pair, question, image, reference=text)
    logits = pair.vlm(**inputs).logits[0, prompt_len - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).cpu()


def answer_token_ids(pair: ModelPair, question: str, image: Image.Image | None, text: str) -> list[int]:
    """The ids of `text`'s tokens as teacher forcing reads them after the prompt (as `answer_logprobs`)."""
    prompt_len = build_inputs(pair, question, image)["input_ids"].shape[1]
    return build_inputs(pair, question, image, reference=text)["input_ids"][0, prompt_len:].tolist()


def divergence_along(base: torch.Tensor, merged: torch.Tensor, ids: list[int], decode) -> dict[str, Any]:
    """The per-token record of one answer from the two [tokens, vocab] log-softmaxes of `answer_logprobs`
    (base VLM, merge) and the answer's token ids: {"tokens": their texts (`decode(id)`), "logp_base",
    "logp_merged": each token's log-probability (nats, ≤ 0) under either model, "kl": KL(base ‖ merged)
    at each position = Σ_x P(x)·(ln P(x) − ln Q(x)) in nats over the full vocabulary (Cover & Thomas,
    eq. 2.26), "mean_kl": its mean over the answer (0.0 for an empty one), "mean_logp_base",
    "mean_logp_merged": the means of the log-probabilities}. Raises ValueError when the shapes differ."""
    if base.shape != merged.shape or base.shape[0] != len(ids):
        raise ValueError(f"shapes differ: base {tuple(base.shape)}, merged {tuple(merged.shape)}, {len(ids)} ids")
    base64, merged64 = base.double(), merged.double()
    kl = (base64.exp() * (base64 - merged64)).nan_to_num(0.0).sum(dim=-1).clamp(min=0.0).tolist()
    index = torch.tensor(ids, dtype=torch.long)[:, None]
    logp_base = base64.gather(1, index)[:, 0].tolist() if ids else []
    logp_merged = merged64.gather(1, index)[:, 0].tolist() if ids else []

    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values) if values else 0.0
    return {"tokens": [decode(i) for i in ids], "logp_base": logp_base, "logp_merged": logp_merged, "kl": kl,
            "mean_kl": mean(kl), "mean_logp_base": mean(logp_base), "mean_logp_merged": mean(logp_merged)}


def first_parting(pair: ModelPair, base_answer: str, merged_answer: str) -> int | None:
    """The index of the first token at which two answers' token sequences differ (one ending early counts
    as differing there), or None when they are the same sequence."""
    tokenizer = text_tokenizer(pair.processor)
    a = tokenizer.encode(base_answer, add_special_tokens=False)
    b = tokenizer.encode(merged_answer, add_special_tokens=False)
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))
