"""Named model pairs (`--pair NAME`): the registry the entry points (CLI, app) resolve names with.

Each entry names a VLM, the text LLM that shares its language backbone, and where one exists the
common base model (for task arithmetic, TIES, DARE). The toy pairs are the project's own, shipped in
assets/toy and loaded for real in the tests; the hub pairs' tensor layouts are verified in the tests by
instantiating each architecture from hand-written configs on the meta device (no download).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from merging.errors import MergescopeError

# The trained toy pair shipped in the repository (written by `python -m toy.train`). The paths are
# data here: the library names where the assets lie and never imports the toy package that made them.
TOY_DIR = Path(__file__).resolve().parents[2] / "assets" / "toy"
TOY_VLM = TOY_DIR / "vlm"
TOY_LLM = TOY_DIR / "llm"
TOY_LLM_NOSEED = TOY_DIR / "llm_noseed"
TOY_SEED = TOY_DIR / "seed"
TOY_EVAL = TOY_DIR / "eval" / "toy_eval.jsonl"


@dataclass(frozen=True)
class KnownPair:
    """A named pair: VLM, donor LLM and optional base (folders or hub ids), with the eval set and extra donors
    it is served with."""
    vlm: str
    llm: str
    base: str | None
    note: str
    eval_set: str | None = None  # examples and sweep items served with the pair when none is named
    donor_label: str = "donor"   # the donor's name where several are offered
    other_donors: tuple[tuple[str, str], ...] = ()  # (label, folder or hub id): more donors of the same shape
    answer_tokens: int = 32      # Compare's default max new tokens: room for the pair's usual answer


SHARED_SEED, NO_SHARED_SEED = "LLM from the shared seed", "LLM from another init (no shared seed)"


def _toy_pair(llm: Path, label: str, other: Path, other_label: str, note: str) -> KnownPair:
    # the toy answers in one or two tokens ("red", "6"): 8 keeps the answer boxes small
    return KnownPair(str(TOY_VLM), str(llm), str(TOY_SEED), note, str(TOY_EVAL), label, ((other_label, str(other)),),
                     answer_tokens=8)


DEFAULT_PAIR = "toy"

KNOWN_PAIRS: dict[str, KnownPair] = {
    "toy": _toy_pair(TOY_LLM, SHARED_SEED, TOY_LLM_NOSEED, NO_SHARED_SEED,
                     "the trained toy pair shipped in assets/toy (CPU, offline): the default"),
    "toy-noseed": _toy_pair(TOY_LLM_NOSEED, NO_SHARED_SEED, TOY_LLM, SHARED_SEED,
                            "the toy VLM with a donor of the same shape trained from another random init: "
                            "merges that do not share a seed (the seed is not this donor's ancestor)"),
    "qwen2.5-vl-7b": KnownPair("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B",
                               "the reference pair of the blog post"),
    "qwen2.5-vl-3b": KnownPair("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B",
                               "tied embeddings"),
    "qwen2.5-vl-72b": KnownPair("Qwen/Qwen2.5-VL-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B",
                                "needs several GPUs: --device auto-multi"),
    "qwen2-vl-2b": KnownPair("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-1.5B-Instruct", "Qwen/Qwen2-1.5B",
                             "tied embeddings"),
    "smolvlm": KnownPair("HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", None,
                         "Idefics3 layout; 3 added image tokens (shared rows merged)"),
    "llava-1.5-7b": KnownPair("llava-hf/llava-1.5-7b-hf", "lmsys/vicuna-7b-v1.5", None,
                              "LLaVA layout; 64 added tokens (shared rows merged)"),
    # the pairs asked for in mergekit's tracker (#618, #659, #439, #319): VLMs built on a released text LLM
    "qwen3-vl-8b": KnownPair("Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-8B", "Qwen/Qwen3-8B-Base",
                             "Qwen3 q/k norms; DeepStack adds vision features to the first 3 layers' hidden "
                             "states; interleaved MRoPE, rope θ 5e6 (the donor: 1e6)"),
    "gemma-3-27b": KnownPair("google/gemma-3-27b-it", "google/medgemma-27b-text-it", None,
                             "Gemma 3 27B with the text-only MedGemma of the same backbone; q/k norms and "
                             "four norms per layer, tied head"),
    "mistral-small-3.1": KnownPair("mistralai/Mistral-Small-3.1-24B-Instruct-2503",
                                   "mistralai/Mistral-Small-24B-Instruct-2501", None,
                                   "Mistral 3 hub layout (consolidated.safetensors skipped); rope θ 1e9 "
                                   "(Mistral Small 3: 1e8)", donor_label="Mistral Small 3",
                                   other_donors=(("Devstral Small", "mistralai/Devstral-Small-2505"),)),
    "pixtral-12b": KnownPair("mistral-community/pixtral-12b", "mistralai/Mistral-Nemo-Instruct-2407", None,
                             "LLaVA layout with a Pixtral tower; rope θ 1e9 (Mistral NeMo: 1e6)"),
    "internvl3-8b": KnownPair("OpenGVLab/InternVL3-8B-hf", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B",
                              "InternVL layout over Qwen2.5; the VLM has 151674 vocabulary rows, the donor "
                              "152064 (the shared rows merge)"),
    "llava-onevision-7b": KnownPair("llava-hf/llava-onevision-qwen2-7b-ov-hf", "Qwen/Qwen2-7B-Instruct",
                                    "Qwen/Qwen2-7B", "LLaVA-OneVision layout over Qwen2; 64 more vocabulary "
                                    "rows than the donor (the shared rows merge)"),
    "llama-3.2-11b-vision": KnownPair("meta-llama/Llama-3.2-11B-Vision-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
                                      None, "Mllama: 8 of the 40 decoder layers are cross-attention, VLM-only; "
                                      "the other 32 pair with Llama 3.1 8B's in order; 8 image-token rows"),
}


def known_pair(name: str) -> KnownPair:
    """The registered pair `name`; MergescopeError listing the names otherwise."""
    if name not in KNOWN_PAIRS:
        raise MergescopeError(f"unknown pair {name!r}; choose one of {sorted(KNOWN_PAIRS)}")
    return KNOWN_PAIRS[name]


def resolve_models(pair: str | None, vlm: str | None, llm: str | None, base: str | None) -> KnownPair:
    """The models to load from what the user named: `pair`'s, each overridable, the toy pair when
    nothing is named, and a clear error for a VLM without a donor or vice versa."""
    if not (pair or vlm or llm):
        pair = DEFAULT_PAIR
    if pair:
        known = known_pair(pair)
        if llm:  # another donor: the pair's alternatives were alternatives to its own donor
            known = replace(known, llm=llm, donor_label="donor", other_donors=())
        return replace(known, vlm=vlm or known.vlm, base=base or known.base)
    if not (vlm and llm):
        raise MergescopeError("name both models (--vlm and --llm), a pair (--pair NAME), or neither for the toy pair")
    return KnownPair(vlm, llm, base, "")
