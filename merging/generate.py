"""Answer an image + question with the resident model's current weights (greedy, deterministic)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .errors import MergescopeError
from .pair import ModelPair

MAX_QUESTION_CHARS = 2000


def load_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise MergescopeError(f"{path}: not a readable image ({exc})") from exc


def build_question(question: str) -> str:
    """The question stripped, or a clear error when it is empty or too long."""
    question = question.strip()
    if not question:
        raise MergescopeError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise MergescopeError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question


def build_inputs(pair: ModelPair, question: str, image: Image.Image | None) -> dict:
    """Chat-template the question (with the image, if any) into model inputs."""
    question = build_question(question)
    if image is not None and not pair.is_multimodal:
        raise MergescopeError("this model reads text only; ask without an image")
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if pair.is_multimodal:
        prompt = pair.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = pair.processor(text=[prompt], images=[image] if image is not None else None, return_tensors="pt")
    else:
        inputs = pair.processor.apply_chat_template([{"role": "user", "content": question}],
                                                    add_generation_prompt=True, return_dict=True,
                                                    return_tensors="pt")
    return {k: v.to(pair.vlm.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def tokenizer_of(pair: ModelPair):
    return getattr(pair.processor, "tokenizer", pair.processor)


@torch.no_grad()
def answer(pair: ModelPair, question: str, image: Image.Image | None = None, max_new_tokens: int = 32) -> str:
    """Greedy answer to `question` about `image` with whatever weights the VLM holds now."""
    inputs = build_inputs(pair, question, image)
    tokenizer = tokenizer_of(pair)
    output = pair.vlm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
