"""What besides the weights changes an answer, read from the loaded objects: the cache key's "runtime" part.

The answers cache must never serve an answer computed under other conditions. The weights are
fingerprinted from their files (`Checkpoint.fingerprint`); everything else that decides an answer is
read here from what is loaded, never from the flags that asked for it (a flag list misses what a
folder's files set on their own, such as a processor's max_pixels or a generation config's
repetition penalty):

- the resident model's dtype and device (a GPU by its name: two GPUs of one kind answer alike);
- the processor's configuration (image processor settings, the tokenizer's vocabulary and special
  tokens, the chat template), as the processor serialises itself;
- the model's generation config (the defaults `generate` starts from);
- the versions of the code that computes (the engine's, transformers', torch's).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import transformers

from merging.run.generate import text_tokenizer
from merging.model.pair import ModelPair


def runtime_fingerprint(pair: ModelPair, engine_version: str) -> dict[str, str]:
    """{"dtype", "device", "files", "code"}: the resident model's dtype and device, a 16-hex digest of
    its processor, chat template and generation config, and one of `engine_version` with the library
    versions. Reads the loaded objects (a few ms for a tokenizer's vocabulary; callers keep the result)."""
    parameter = next(pair.vlm.parameters())
    device = parameter.device
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    files = {"processor": _processor_state(pair.processor),
             "generation": _generation_state(getattr(pair.vlm, "generation_config", None))}
    code = {"engine": engine_version, "transformers": transformers.__version__, "torch": torch.__version__}
    return {"dtype": str(parameter.dtype).removeprefix("torch."), "device": device_name,
            "files": _digest(files), "code": _digest(code)}


def _processor_state(processor: Any) -> dict:
    """The processor as it serialises itself (with its image and video processors' settings), its chat
    template, and its tokenizer's vocabulary, merges and special tokens (the fast tokenizer's JSON), which
    the processor's own JSON leaves out."""
    tokenizer = text_tokenizer(processor)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = {"tokenizer": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
             "special": [str(t) for t in tokenizer.all_special_tokens],
             "chat_template": getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)}
    if processor is not tokenizer:  # its own settings and its sub-processors' (max_pixels, patch size, ...)
        state["processor"] = processor.to_json_string()
    return state


def _generation_state(config: Any) -> dict | None:
    if config is None:
        return None
    data = config.to_dict()
    data.pop("transformers_version", None)  # the code's version is keyed separately
    return data


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
