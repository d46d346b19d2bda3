"""The toy world: a user of the library, never imported by it.

- `world`: the deterministic scene/question generator; `train`: the recipe that writes assets/toy
  (`python -m toy.train`); `evaluate_toy`: accuracy tables; `demo`: one question of each kind;
- `tiny`: small random model pairs built on disk (tests, benchmarks, and the training recipe's shapes);
- the shipped folders (`TOY_VLM`, `TOY_LLM`, `TOY_LLM_NOSEED`, `TOY_SEED`, `TOY_EVAL`) are named once, in
  the pair registry `merging.model.known_pairs`, which the `--pair toy` entry points resolve.
"""

from merging.model.known_pairs import TOY_DIR, TOY_EVAL, TOY_LLM, TOY_LLM_NOSEED, TOY_SEED, TOY_VLM

__all__ = ["TOY_DIR", "TOY_EVAL", "TOY_LLM", "TOY_LLM_NOSEED", "TOY_SEED", "TOY_VLM"]
