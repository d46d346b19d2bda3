"""Teacher-forced log-probabilities of reference answers, many per forward pass (the search's cheap fitness).

`generate.reference_logprob` scores one (question, reference) pair per forward pass; a search scores
hundreds per trial, so here the prompts + references of a batch are right-padded into one forward pass.
Right padding keeps every real token at the positions it has alone (pads come after it, and causal
attention never looks ahead), so each row's log-probabilities equal the single-item ones up to
floating-point reduction order (tested against `reference_logprob` in float32).
"""

from __future__ import annotations

import torch
from PIL import Image

from merging.errors import MergescopeError
from merging.run.generate import chat_prompt, check_question, fit_image, text_tokenizer
from merging.model.pair import ModelPair


@torch.no_grad()
def reference_logprobs(pair: ModelPair, requests: list[tuple[str, Image.Image | None, str]],
                       batch_size: int = 32) -> list[float]:
    """For each (question, image or None, reference): the mean log-probability per token (nats, ≤ 0) of
    `reference` as the answer, with whatever weights the VLM holds now, in input order; image and
    text-only requests go to separate forward passes of at most `batch_size` rows. Raises
    MergescopeError for an empty reference or question, or an image given to a text-only model."""
    tokenizer = text_tokenizer(pair.processor)
    prepared = []
    for question, image, reference in requests:
        question = check_question(question)
        if image is not None and not pair.is_multimodal:
            raise MergescopeError("this model reads text only; ask without an image")
        prompt = chat_prompt(pair.processor, question, with_image=image is not None)
        # the reference's tokens: what the prompt + reference text has beyond the prompt's (the image
        # placeholder expands alike in both, so plain tokenizer counts suffice)
        count = len(tokenizer(prompt + reference, add_special_tokens=False)["input_ids"]) - \
            len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not reference or count < 1:
            raise MergescopeError("the reference answer is empty")
        prepared.append((prompt + reference, None if image is None else fit_image(image), count))
    values = [0.0] * len(prepared)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for with_image in (False, True):
            indices = [i for i, p in enumerate(prepared) if (p[1] is not None) == with_image]
            for start in range(0, len(indices), batch_size):
                part = indices[start:start + batch_size]
                for i, value in zip(part, _forward_rows(pair, [prepared[i] for i in part])):
                    values[i] = value
    finally:
        tokenizer.padding_side = side
    return values


def _forward_rows(pair: ModelPair, rows: list[tuple[str, Image.Image | None, int]]) -> list[float]:
    """One right-padded forward pass; each row's mean log-probability over its last `count` real tokens."""
    texts = [text for text, _, _ in rows]
    images = [image for _, image, _ in rows if image is not None] or None
    if pair.is_multimodal:
        inputs = pair.processor(text=texts, images=images, return_tensors="pt", padding=True)
    else:
        inputs = pair.processor(texts, return_tensors="pt", add_special_tokens=False, padding=True)
    inputs = {k: v.to(pair.vlm.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    logprobs = torch.log_softmax(pair.vlm(**inputs).logits.float(), dim=-1)   # (batch, seq, vocab)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()                      # real tokens per row
    values = []
    for row, ((_, _, count), length) in enumerate(zip(rows, lengths)):
        targets = inputs["input_ids"][row, length - count:length]               # (count,)
        predicted = logprobs[row, length - count - 1:length - 1]                # (count, vocab)
        values.append(float(predicted.gather(1, targets[:, None]).mean()))
    return values
