"""A first look without a browser: the shipped toy pair, a few merges applied in place, answers compared.

    python -m toy.demo [--pair toy|toy-noseed]

Loads the toy VLM with a donor (by default the LLM fine-tuned from the same seed), asks one held-out
question of each kind, then applies a few plans in place and prints how the answers change, with the
time each switch took, and finally restores the VLM and checks that it is bit-exact again.
"""

from __future__ import annotations

import argparse

import torch
from transformers.utils import logging as hf_logging

from merging.evals.eval_sets import load_eval_set
from merging.model.known_pairs import known_pair
from merging.plan.merge_plan import MergePlan
from merging.run.generate import GenerationSettings
from merging.run.stack import ModelSpec, build_stack
from . import world

PLANS = {
    "Setting 2, loglinear 0.05→0.4 (self-attention)":
        {"components": ["self_attn"], "curve": {"preset": "loglinear", "start": 0.05, "end": 0.4}},
    "Setting 1, constant 0.6 (all tensors)": {"components": ["all"], "curve": {"preset": "constant", "value": 0.6}},
    "donor's layers 0–3 swapped in": {"components": ["all"],
                                       "curve": {"preset": "custom", "values": [1, 1, 1, 1, 0, 0, 0, 0]}},
}
SETTINGS = GenerationSettings(max_new_tokens=6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="toy", choices=["toy", "toy-noseed"], help="donor with or without a shared seed")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    known = known_pair(args.pair)
    stack = build_stack(ModelSpec(str(known.vlm), str(known.llm)))
    pair, answerer = stack.pair, stack.answerer
    items = load_eval_set(known.eval_set)
    questions = [next(it for it in items if world.kind_of(it.id) == kind) for kind in world.KINDS]
    params = dict(pair.vlm.named_parameters())
    original = {s.name: params[s.name].detach().clone() for s in pair.layout.slots}
    print(f"{args.pair}: {pair.layout.num_layers} layers, {len(pair.layout.slots)} mergeable tensors\n")

    columns = {"base VLM": MergePlan(), **{name: MergePlan.from_dict({"rules": [rule]}) for name, rule in PLANS.items()}}
    answers: dict[str, list[str]] = {}
    for name, plan in columns.items():
        report = answerer.run(lambda engine: engine.apply(plan))
        answers[name] = [answerer.ask(plan, it.question, it.image(), SETTINGS)["answer"] for it in questions]
        print(f"[{len(answers)}] {name}: {len(report.written)} tensors written, {len(report.restored)} restored "
              f"in {report.seconds * 1000:.1f} ms")
    print(f"\n{'question':<62} {'truth':<12}" + "".join(f"[{i}]".ljust(13) for i in range(1, len(columns) + 1)))
    for row, it in enumerate(questions):
        shown = ("🖼 " if it.image_path else "") + it.question
        print(f"{shown[:61]:<62} {it.answer:<12}" + "".join(f"{answers[n][row][:12]:<13}" for n in columns))
    answerer.run(lambda engine: engine.restore())
    exact = all(torch.equal(params[n], t) for n, t in original.items())
    print(f"\nrestored to the base VLM: bit-exact = {exact}")


if __name__ == "__main__":
    main()
