"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): after each decoder layer,
the residual stream at the first answer position decoded through the model's own final norm and LM
head, as if the model stopped there. Applied after the last layer it is the model's output itself.

Written here rather than taken from a library: tuned-lens / TransformerLens wrap their own model
classes, while this reads the resident (possibly merged) VLM as it is, with forward hooks on its
decoder layers — one forward pass, no copy of the weights. Callers hold the engine's lock (as for
`probe.first_token_logprobs`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from merging.errors import MergescopeError
from merging.model.pair import ModelPair
from merging.run.generate import build_inputs
from merging.run.probe import token_decoder


def _modules(pair: ModelPair) -> tuple[list[torch.nn.Module], torch.nn.Module, torch.nn.Module]:
    """(decoder layers in depth order, the final norm, the LM head) of the resident VLM, found from the
    layout's parameter names (…layers.{i}.…, the `norm` slot) and the model's output embeddings."""
    layout = pair.layout
    prefixes: dict[int, str] = {}
    norm_name = None
    for slot in layout.slots:
        if slot.layer is not None and slot.layer not in prefixes:
            marker = f"layers.{slot.layer}."
            prefixes[slot.layer] = slot.name[: slot.name.index(marker) + len(marker) - 1]
        elif slot.role == "norm":
            norm_name = slot.name.rsplit(".", 1)[0]
    head = pair.vlm.get_output_embeddings()
    if norm_name is None or head is None or len(prefixes) != layout.num_layers:
        raise MergescopeError("the logit lens needs the model's final norm, LM head and every decoder layer; "
                              "this model's layout does not name them all")
    layers = [pair.vlm.get_submodule(prefixes[i]) for i in range(layout.num_layers)]
    return layers, pair.vlm.get_submodule(norm_name), head


@torch.no_grad()
def lens_logprobs(pair: ModelPair, question: str, image: Image.Image | None) -> torch.Tensor:
    """Log-softmax (natural log, float32, shape [num_layers, vocab] on the CPU): row i is the output of
    decoder layer i at the first answer position through the final norm and the LM head, with the
    weights the VLM holds now; one forward pass. Raises MergescopeError as `build_inputs` does, or for a
    model whose layers, norm or head cannot be found."""
    layers, norm, head = _modules(pair)
    captured: list[torch.Tensor] = []

    def keep(_module, _args, output):  # a decoder layer returns a tensor or a tuple led by it
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[0, -1].detach())

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        pair.vlm(**build_inputs(pair, question, image))
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != len(layers):
        raise MergescopeError(f"the logit lens saw {len(captured)} of {len(layers)} decoder layers run")
    residual = torch.stack(captured)
    logits = head(norm(residual.to(next(norm.parameters()).dtype))).float()
    return torch.log_softmax(logits, dim=-1).cpu()


def lens_rows(pair: ModelPair, logprobs: torch.Tensor, gold_id: int | None) -> list[dict[str, Any]]:
    """One row per layer of a `lens_logprobs` result: {"layer": i (0-based), "token": the most probable
    token's text, "p_top": its probability, "p_gold": probability of token `gold_id` (None without)}."""
    decode = token_decoder(pair)
    rows = []
    for layer, row in enumerate(logprobs):
        value, token_id = torch.max(row, dim=0)
        rows.append({"layer": layer, "token": decode(int(token_id)), "p_top": math.exp(float(value)),
                     "p_gold": None if gold_id is None else math.exp(float(row[gold_id]))})
    return rows
