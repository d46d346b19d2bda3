"""Answer an image + question with the resident model's current weights, and score references.

Greedy decoding by default (deterministic, so answers are cacheable); sampling only with an explicit
seed (streaming: `worker.ModelWorker.stream`). `reference_logprob` is the
teacher-forced mean log-likelihood of a reference answer — a cheap, smooth metric for sweeps.
These run on the model worker's thread (merging/run/worker.py), so the weights cannot change mid-answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image

from merging.errors import MergescopeError
from merging.io.images import fit_image
from merging.model.pair import ModelPair

MAX_QUESTION_CHARS = 2000
MAX_STOPS, MAX_STOP_CHARS = 16, 200


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is generated: greedy (seed None) or seeded sampling, a token limit and stop strings.

    Raises MergescopeError for max_new_tokens outside [1, 4096], sampling parameters out of range, or a
    stop string that is empty, not text, over MAX_STOP_CHARS (or more than MAX_STOPS of them)."""
    max_new_tokens: int = 32
    seed: int | None = None          # None: greedy. An int: sampling, reproducible with that seed
    temperature: float = 0.7
    top_p: float = 0.9
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 4096:
            raise MergescopeError(f"max_new_tokens={self.max_new_tokens} is outside [1, 4096]")
        if self.seed is not None and not (0 < self.temperature <= 5 and 0 < self.top_p <= 1):
            raise MergescopeError("sampling needs 0 < temperature ≤ 5 and 0 < top_p ≤ 1")
        # a stop string that cannot occur, or occurs everywhere (""), means nothing: refuse it, never answer ""
        for stop in self.stop:
            if not isinstance(stop, str) or not stop or len(stop) > MAX_STOP_CHARS:
                raise MergescopeError(f"stop strings must be non-empty text of at most {MAX_STOP_CHARS} characters, "
                                      f"got {stop!r:.60}")
        if len(self.stop) > MAX_STOPS:
            raise MergescopeError(f"{len(self.stop)} stop strings; the limit is {MAX_STOPS}")

    def as_dict(self) -> dict:
        """For cache keys: only what changes the answer."""
        data = asdict(self)
        if self.seed is None:
            data.pop("temperature")
            data.pop("top_p")
        data["stop"] = list(self.stop)
        return data


def check_question(question: str) -> str:
    """The question stripped, or a clear error when it is empty or too long."""
    question = question.strip()
    if not question:
        raise MergescopeError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise MergescopeError(f"the question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question


def text_tokenizer(processor: Any) -> Any:
    """The text tokenizer of `processor` (a VLM's ProcessorMixin, or a causal LM's tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def chat_prompt(processor, question: str, with_image: bool) -> str:
    """The chat-templated prompt for `question` (after an image placeholder if `with_image`), ready for
    the assistant's answer; a VLM's processor takes content parts, a causal LM's tokenizer plain text."""
    if hasattr(processor, "image_processor"):
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    return processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False)


def build_inputs(pair: ModelPair, question: str, image: Image.Image | None, reference: str = "") -> dict:
    """Chat-template the question (with the image, if any) into model inputs; `reference` follows the
    assistant prompt (for scoring)."""
    question = check_question(question)
    if image is not None and not pair.is_multimodal:
        raise MergescopeError("this model reads text only; ask without an image")
    if image is not None:
        image = fit_image(image)
    prompt = chat_prompt(pair.processor, question, with_image=image is not None)
    if pair.is_multimodal:
        inputs = pair.processor(text=[prompt + reference], images=[image] if image is not None else None,
                                return_tensors="pt")
    else:
        inputs = pair.processor([prompt + reference], return_tensors="pt", add_special_tokens=False)
    return {k: v.to(pair.vlm.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def generate_kwargs(pair: ModelPair, settings: GenerationSettings) -> dict:
    """`generate()`'s keyword arguments for `settings` (seeds torch's generator for sampling)."""
    tokenizer = text_tokenizer(pair.processor)
    kwargs = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "do_sample": settings.seed is not None}
    if settings.seed is not None:
        torch.manual_seed(settings.seed)  # on the model worker's thread: no other generation interleaves
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.stop:
        kwargs.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    return kwargs


def trim_stop(text: str, stop: tuple[str, ...]) -> str:
    """`text` up to the first of the `stop` strings, stripped."""
    for s in stop:
        if s in text:
            text = text[:text.index(s)]
    return text.strip()


@torch.no_grad()
def answer(pair: ModelPair, question: str, image: Image.Image | None = None,
           settings: GenerationSettings = GenerationSettings()) -> str:
    """The full answer to `question` (about `image`) with whatever weights the VLM holds now."""
    inputs = build_inputs(pair, question, image)
    output = pair.vlm.generate(**inputs, **generate_kwargs(pair, settings))
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return trim_stop(text_tokenizer(pair.processor).decode(new_tokens, skip_special_tokens=True), settings.stop)


def default_batch_size(pair: ModelPair) -> int:
    """Answers generated per `generate` call when the caller does not say.

    On the CPU, per-call and per-step overheads dominate small models, so small models take large
    batches: 16 prompts per billion parameters' worth of 1 B, i.e. 16 / max(B, 1/8) clamped to [8, 128]
    (the toy pair: 128; 0.3 B: 53; 7 B: 8). On CUDA, as many as fit in a quarter of the device's free
    memory at 1 MiB of KV cache per 1 B parameters and sequence (a rough, safe bound), between 8 and 64.
    """
    device = next(pair.vlm.parameters()).device
    billions = sum(p.numel() for p in pair.vlm.parameters()) / 1e9
    if device.type != "cuda":
        return int(min(128, max(8, 16 / max(billions, 0.125))))
    free = torch.cuda.mem_get_info(device)[0]
    return int(min(64, max(8, free / 4 / (billions * 2**20 * 1024))))


@torch.no_grad()
def answer_batch(pair: ModelPair, requests: list[tuple[str, Image.Image | None]],
                 settings: GenerationSettings = GenerationSettings(), batch_size: int | None = None) -> list[str]:
    """Greedy answers to `requests` [(question, image or None), ...], in input order, `batch_size` prompts
    per left-padded `generate` call (default: `default_batch_size`).

    Image and text-only requests go to separate calls (a processor matches images to placeholders in
    order, and the text-only prompts' shorter positions would only add padding). Each sequence stops
    on its own at EOS, a stop string or `max_new_tokens`. generate() derives positions from the
    attention mask (Qwen2.5-VL's 3D rope positions too), so in float32 the answers equal
    `answer(...)` one at a time (tested); in bfloat16 padded rows can differ in rare near-ties.
    Seeded sampling draws differently in a batch, so it is refused (MergescopeError): sample one at a time.
    """
    if settings.seed is not None:
        raise MergescopeError("batched answers are greedy; sample one answer at a time (seed set)")
    batch_size = batch_size or default_batch_size(pair)
    if batch_size < 1:
        raise MergescopeError(f"batch size {batch_size} must be ≥ 1")
    prepared = []
    for question, image in requests:
        question = check_question(question)
        if image is not None and not pair.is_multimodal:
            raise MergescopeError("this model reads text only; ask without an image")
        image = fit_image(image) if image is not None else None
        prepared.append((chat_prompt(pair.processor, question, with_image=image is not None), image))
    answers = [""] * len(prepared)
    tokenizer = text_tokenizer(pair.processor)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for with_image in (False, True):
            indices = [i for i, (_, image) in enumerate(prepared) if (image is not None) == with_image]
            for start in range(0, len(indices), batch_size):
                part = indices[start:start + batch_size]
                for i, text in zip(part, _generate_rows(pair, [prepared[i] for i in part], settings)):
                    answers[i] = text
    finally:
        tokenizer.padding_side = side
    return answers


def _generate_rows(pair: ModelPair, prepared: list[tuple[str, Image.Image | None]],
                   settings: GenerationSettings) -> list[str]:
    """One left-padded generate() call over prompts that all have an image, or all have none."""
    texts = [prompt for prompt, _ in prepared]
    # one list per prompt: Gemma 3's, Mllama's and Idefics3's processors read a flat list as one
    # prompt's images; the others flatten a nested list
    images = [[image] for _, image in prepared if image is not None] or None
    if pair.is_multimodal:
        inputs = pair.processor(text=texts, images=images, return_tensors="pt", padding=True)
    else:
        inputs = pair.processor(texts, return_tensors="pt", add_special_tokens=False, padding=True)
    inputs = {k: v.to(pair.vlm.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    output = pair.vlm.generate(**inputs, **generate_kwargs(pair, settings))
    tokenizer = text_tokenizer(pair.processor)
    return [trim_stop(tokenizer.decode(row, skip_special_tokens=True), settings.stop)
            for row in output[:, inputs["input_ids"].shape[1]:]]


@torch.no_grad()
def reference_logprob(pair: ModelPair, question: str, reference: str, image: Image.Image | None = None) -> float:
    """Mean natural-log probability per token (nats, ≤ 0) of `reference` as the answer, by teacher
    forcing. Raises MergescopeError for an empty reference, question or a bad image."""
    prompt_len = build_inputs(pair, question, image)["input_ids"].shape[1]
    inputs = build_inputs(pair, question, image, reference=reference)
    logits = pair.vlm(**inputs).logits[0, prompt_len - 1:-1].float()
    targets = inputs["input_ids"][0, prompt_len:]
    if targets.numel() == 0:
        raise MergescopeError("the reference answer is empty")
    return float(torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).mean())
