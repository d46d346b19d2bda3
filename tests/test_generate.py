"""Generation on the real tiny Qwen2.5-VL: streaming, seeded sampling, stop strings, limits, scoring."""

import pytest
from PIL import Image

from merging.errors import MergescopeError
from merging.io.images import MAX_MODEL_PIXELS, fit_image
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings, answer, build_inputs, reference_logprob
from merging.run.worker import Donor, ModelWorker

IMAGE = Image.new("RGB", (56, 56), (250, 200, 0))


def test_stream_ends_with_the_full_answer(qwen_engine):
    settings = GenerationSettings(max_new_tokens=12)
    worker, donor = ModelWorker(qwen_engine), Donor("donor", qwen_engine.pair.donor, qwen_engine.pair.layout)
    pieces = list(worker.stream(MergePlan(), donor, "What colour?", IMAGE, settings))
    assert len(pieces) > 1 and pieces[-1] == answer(qwen_engine.pair, "What colour?", IMAGE, settings)
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))  # grows token by token


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(qwen_pair):
    greedy = [answer(qwen_pair, "Describe it.", IMAGE) for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = {seed: answer(qwen_pair, "Describe it.", IMAGE, GenerationSettings(seed=seed, temperature=2.0))
               for seed in (1, 2, 3)}
    assert sampled[1] == answer(qwen_pair, "Describe it.", IMAGE, GenerationSettings(seed=1, temperature=2.0))
    assert len(set(sampled.values())) > 1


def test_text_only_question_and_stop_strings(qwen_pair):
    full = answer(qwen_pair, "Count to three.", None, GenerationSettings(max_new_tokens=16))
    assert full
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = answer(qwen_pair, "Count to three.", None, GenerationSettings(max_new_tokens=16, stop=(stop,)))
    assert stop not in cut and full.startswith(cut)


def test_image_limits():
    with pytest.raises(MergescopeError, match="the limit is 16.8 MP"):
        fit_image(Image.new("RGB", (5000, 4000)))
    shrunk = fit_image(Image.new("RGB", (2000, 1000)))
    assert shrunk.size[0] * shrunk.size[1] <= MAX_MODEL_PIXELS and abs(shrunk.size[0] / shrunk.size[1] - 2) < 0.01


@pytest.mark.parametrize("question,message", [("", "the question is empty"), ("x" * 2001, "the limit is 2000")])
def test_bad_questions(qwen_pair, question, message):
    with pytest.raises(MergescopeError, match=message):
        answer(qwen_pair, question, IMAGE)


def test_bad_settings():
    with pytest.raises(MergescopeError, match="max_new_tokens=0"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(MergescopeError, match="temperature"):
        GenerationSettings(seed=1, temperature=0)


def test_score_is_the_mean_log_probability_of_the_reference_tokens(qwen_pair):
    import torch
    reference = "three red"
    prompt = build_inputs(qwen_pair, "How many?", IMAGE)["input_ids"]
    full = build_inputs(qwen_pair, "How many?", IMAGE, reference=reference)
    n_ref = full["input_ids"].shape[1] - prompt.shape[1]
    assert torch.equal(full["input_ids"][0, :prompt.shape[1]], prompt[0]) and n_ref >= 2
    with torch.no_grad():
        logprobs = torch.log_softmax(qwen_pair.vlm(**full).logits[0].float(), dim=-1)
    targets = full["input_ids"][0, -n_ref:]
    expected = logprobs[-n_ref - 1:-1].gather(1, targets[:, None]).mean()
    assert reference_logprob(qwen_pair, "How many?", reference, IMAGE) == pytest.approx(float(expected), abs=1e-5)
    assert -20 < float(expected) < 0
    with pytest.raises(MergescopeError, match="reference answer is empty"):
        reference_logprob(qwen_pair, "How many?", "", IMAGE)
