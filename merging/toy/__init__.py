"""The toy world: tiny, locally built model pairs (no downloads) for tests and benchmarks, and the
trained toy pair that `python -m merging.toy.train` writes and the project ships under assets/toy as
the offline default (`--pair toy`, `--pair toy-noseed`).

- `TOY_VLM`: Qwen2.5-VL (+ processor), fine-tuned on image questions from the shared seed;
- `TOY_LLM`: Qwen2 (+ tokenizer), fine-tuned on text questions from the same seed (the default donor);
- `TOY_LLM_NOSEED`: the same shape and text recipe from a different random init (a donor for contrast);
- `TOY_SEED`: the shared seed both were fine-tuned from (their common ancestor: a base for task arithmetic,
  TIES, DARE);
- `TOY_EVAL`: the held-out eval set (project eval JSONL, images beside it).
"""

from pathlib import Path

TOY_DIR = Path(__file__).resolve().parents[2] / "assets" / "toy"
TOY_VLM = TOY_DIR / "vlm"
TOY_LLM = TOY_DIR / "llm"
TOY_LLM_NOSEED = TOY_DIR / "llm_noseed"
TOY_SEED = TOY_DIR / "seed"
TOY_EVAL = TOY_DIR / "eval" / "toy_eval.jsonl"

__all__ = ["TOY_DIR", "TOY_EVAL", "TOY_LLM", "TOY_LLM_NOSEED", "TOY_SEED", "TOY_VLM"]
