"""The GPU measurements behind benchmarks/gpu_check.sh (run that; it checks for CUDA and cleans up).

On a Qwen2.5-VL-7B-shaped pair (hidden 3584, 28 layers, 28/4 heads, MLP 18944, vocabulary 152064,
untied, bf16; random weights, toy/sharded.py) loaded on the GPU, prints ONE JSON object:

- apply_{attention,full,one_layer}_s and restore_s, without the device cache (`device_cache_bytes=0`,
  pinned staging on) and with it (default budget: a quarter of free memory), re-applies being the
  median of `--repeats` after one cold apply that fills the cache; attention also without staging
- same_weights_with_cache: the attention plan's tensors with the cache equal those without, bit for bit
- restore_bit_exact: after everything, every merged tensor equals the VLM file
- extra_device_bytes: device memory held by the cached engine (cache entries) after its applies
- switch_vs_limit: benchmarks/switch.py's `switch_figures` on this pair with the cached engine: a fresh
  engine's first apply, the warm switch α 0.4 ↔ 0.5 and, interleaved, its memory-traffic limit (one
  torch.lerp per written tensor on device copies made beforehand), switch_over_limit and the
  per-tensor overhead in µs, for the attention-only and the full plan
- generation tokens/s at batch 1 and batch 32 (model.generate on left-padded random-id prompts,
  greedy, a fixed number of new tokens, no early stop)
- sweep answers/s: one at a time (merging.run.generate.answer per question) vs batched (one
  model.generate over 32 chat prompts) — batched generation is not in merging/run/generate.py yet
- switch: benchmarks/switch.py --device cuda's own JSON

`--shape tiny --device cpu` runs the same code on a tiny pair (tests' smoke run; figures meaningless).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

import merging
from benchmarks.switch import SWITCH_TO, switch_figures
from merging.run.generate import GenerationSettings, answer, chat_prompt, text_tokenizer
from toy.sharded import write_qwen_pair_sharded
from toy.tiny import DecoderShape

SHAPES = {
    "7B": (DecoderShape(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        intermediate_size=18944), 152064),
    "tiny": (DecoderShape(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=128), 1000),
}
ALPHA = 0.4


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def plan(components, curve) -> merging.MergePlan:
    return merging.MergePlan.from_dict({"rules": [{"components": components, "method": "linear", "curve": curve}]})


class Timer:
    def __init__(self, device: str):
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def median(self, fn, setup, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            setup()
            times.append(self(fn))
        return statistics.median(times)


def engine_figures(engine, plans: dict, timer: Timer, repeats: int) -> dict:
    """Apply times (each from the pure VLM; one layer from the per-layer plan) and restore time."""
    attn, full, custom, custom_one = plans["attention"], plans["full"], plans["custom"], plans["custom_one"]
    cold = timer(lambda: engine.apply(attn))  # fills the cache (if any) for attention
    engine.restore()
    return {
        "apply_attention_cold_s": cold,
        "apply_attention_s": timer.median(lambda: engine.apply(attn), engine.restore, repeats),
        "apply_full_s": timer.median(lambda: engine.apply(full), engine.restore, repeats),
        "apply_one_layer_s": timer.median(lambda: engine.apply(custom_one), lambda: engine.apply(custom), repeats),
        "restore_s": timer.median(engine.restore, lambda: engine.apply(full), repeats),
    }


def generation_figures(pair, device: str, timer: Timer, new_tokens: int) -> dict:
    model, vocab = pair.vlm, pair.vlm.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    out = {}
    for batch in (1, 32):
        ids = torch.randint(100, min(vocab, 30000), (batch, 64), generator=gen).to(device)
        mask = torch.ones_like(ids)
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                      pad_token_id=0)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, **dict(kwargs, max_new_tokens=2, min_new_tokens=2))
            seconds = timer(lambda: model.generate(input_ids=ids, attention_mask=mask, **kwargs))
        out[f"tokens_per_s_batch{batch}"] = batch * new_tokens / seconds
    return out


def sweep_figures(pair, timer: Timer, questions: int = 32, new_tokens: int = 16) -> dict:
    settings = GenerationSettings(max_new_tokens=new_tokens)
    texts = [f"What is {i} plus {i + 1}? Answer briefly." for i in range(questions)]
    one = min(8, questions)
    seconds = timer(lambda: [answer(pair, q, None, settings) for q in texts[:one]])
    tokenizer = text_tokenizer(pair.processor)
    tokenizer.padding_side = "left"
    prompts = [chat_prompt(pair.processor, q, with_image=False) for q in texts]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(pair.vlm.device)
    with torch.no_grad():
        batched = timer(lambda: pair.vlm.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                                  pad_token_id=tokenizer.pad_token_id))
    return {"sweep_answers_per_s_one_at_a_time": one / seconds, "sweep_answers_per_s_batched32": questions / batched}


def attention_state(pair) -> dict[str, torch.Tensor]:
    params = dict(pair.vlm.named_parameters())
    return {s.name: params[s.name].detach().cpu().clone() for s in pair.layout.slots if s.group == "self_attn"}


def run(args) -> dict:
    device = args.device
    shape, vocab = SHAPES[args.shape]
    timer = Timer(device)
    work = Path(args.work)
    start = time.perf_counter()
    vlm_dir, llm_dir = write_qwen_pair_sharded(work / "pair", shape, vocab_size=vocab)
    cuda = device.startswith("cuda")
    result: dict = {"cuda": cuda, "device": torch.cuda.get_device_name() if cuda else device,
                    "shape": args.shape, "build_s": time.perf_counter() - start}
    log(f"built pair in {result['build_s']:.0f}s")
    load_s = time.perf_counter()
    pair = merging.load_pair(vlm_dir, llm_dir, dtype="bfloat16", device=device)
    result["load_s"] = time.perf_counter() - load_s
    result["params"] = sum(p.numel() for p in pair.vlm.parameters())
    L = pair.layout.num_layers
    one = [ALPHA] * L
    one[L // 2] = 0.7
    plans = {"attention": plan(["self_attn"], {"preset": "constant", "value": ALPHA}),
             "full": plan(["all"], {"preset": "constant", "value": ALPHA}),
             "custom": plan(["all"], {"preset": "custom", "values": [ALPHA] * L}),
             "custom_one": plan(["all"], {"preset": "custom", "values": one})}

    unstaged = merging.MergeEngine(pair, device_cache_bytes=0, staging=False)
    result["apply_attention_unstaged_s"] = timer.median(lambda: unstaged.apply(plans["attention"]),
                                                        unstaged.restore, args.repeats)
    unstaged.restore()
    plain = merging.MergeEngine(pair, device_cache_bytes=0)
    result["no_cache"] = engine_figures(plain, plans, timer, args.repeats)
    plain.apply(plans["attention"])
    reference = attention_state(pair)
    plain.restore()
    log(f"without cache: {result['no_cache']}")

    allocated = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    cached = merging.MergeEngine(pair, device_cache_bytes=None if device.startswith("cuda") else 2**31)
    result["with_cache"] = engine_figures(cached, plans, timer, args.repeats)
    cached.apply(plans["attention"])
    got = attention_state(pair)
    result["same_weights_with_cache"] = all(torch.equal(got[k], reference[k]) for k in reference)
    result["extra_device_bytes"] = (torch.cuda.memory_allocated() - allocated if device.startswith("cuda")
                                    else cached.device_cache_stats()["used"])
    result["device_cache"] = cached.device_cache_stats()
    constant = lambda components, a: plan(components, {"preset": "constant", "value": a})  # noqa: E731
    result["switch_vs_limit"] = switch_figures(
        cached, {"attention": (plans["attention"], constant(["self_attn"], SWITCH_TO)),
                 "full": (plans["full"], constant(["all"], SWITCH_TO))}, timer.sync, args.repeats, None)
    log(f"switch vs limit: {result['switch_vs_limit']}")
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the limit's device copies go back
    result["extra_resident_bytes"] = cached.extra_resident_bytes()
    cached.restore()
    params = dict(pair.vlm.named_parameters())
    result["restore_bit_exact"] = all(torch.equal(params[s.name].detach().cpu(), pair.vlm_files.get(s.vlm_key))
                                      for s in pair.layout.slots)
    log(f"with cache: {result['with_cache']}")
    cached.clear_device_cache()  # its device memory goes back before generation
    reference.clear()

    result.update(generation_figures(pair, device, timer, args.new_tokens))
    result.update(sweep_figures(pair, timer))
    log("generation done")
    if args.switch_script:
        done = subprocess.run([sys.executable, args.switch_script, "--device", device], capture_output=True,
                              text=True, timeout=args.switch_timeout)
        result["switch"] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}
    result["total_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="temporary folder (the pair goes here)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="7B", choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--switch-script", help="benchmarks/switch.py, run with --device (skipped if absent)")
    parser.add_argument("--switch-timeout", type=int, default=240)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(json.dumps(run(args), indent=1))


if __name__ == "__main__":
    main()
