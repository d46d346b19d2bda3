"""Train the shipped toy pair on CPU: a shared seed, a VLM and an LLM fine-tuned from it, and a no-seed LLM.

    python -m toy.train --out assets/toy            # the full recipe (see RECIPE; ~30 min, 2 cores)
    python -m toy.train --out /tmp/toy --smoke      # every stage for a few steps (seconds)

The recipe follows the seed paper (Sung et al., arXiv 2304.14933): merging works from a shared
initialisation. Stages, all seeded, all on CPU:

1. tokenizer: byte-level BPE trained on the toy world's questions and bare answers (answers are one token);
2. seed: a Qwen2 causal LM trained from random init on text (arithmetic and word counting), with the
   loss on every token (a tiny "pretraining");
3. vision: the Qwen2.5-VL vision tower (+ a linear head, dropped afterwards) pre-trained to classify each
   merged image token — one 28×28 cell — as empty or one of 12 colour×shape classes;
4. VLM: Qwen2.5-VL whose decoder starts from the seed and whose vision tower starts from stage 3,
   fine-tuned on image questions (count, colour, shape, position) plus some of the seed's text tasks;
5. LLM: Qwen2 from the seed, fine-tuned on text (arithmetic, word counting, and "... Add k.", a skill only
   the LLM learns);
6. no-seed LLM: stages 2 and 5 again (same data, same order, same hyper-parameters) from a *different*
   random init — the only difference from the LLM is where it started.

Fine-tuning losses cover the answer tokens (and the closing <|im_end|>) only. Outputs: `vlm/` (model +
processor), `llm/` and `llm_noseed/` (model + tokenizer), `train_log.json` (losses, times, recipe).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.utils import logging as hf_logging

from . import world
from .evaluate_toy import accuracy_table
from .tiny import SHARED_TEXT_KEYS, DecoderShape, _mrope_section
from .tokenizer import build_tokenizer


@dataclass(frozen=True)
class Recipe:
    shape: DecoderShape = DecoderShape(hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=256)
    vision_depth: int = 2
    vision_hidden: int = 128
    vision_heads: int = 4
    vocab_size: int = 600          # a ceiling: the BPE stops earlier when the corpus has no more merges
    batch: int = 64
    seed_steps: int = 600
    vision_steps: int = 150
    vlm_steps: int = 2400
    llm_steps: int = 400
    lr: float = 2e-3               # decoder, from scratch (seed, no-seed LLM)
    finetune_lr: float = 1e-3      # decoder, fine-tuning the LLM from the seed
    vlm_lr: float = 1e-3           # decoder, fine-tuning the VLM from the seed (learning to read image tokens)
    vision_lr: float = 2e-3        # vision tower pre-training
    vlm_vision_lr: float = 0.0     # vision tower inside the VLM stage (0: frozen after pre-training)
    warmup: int = 50
    weight_decay: float = 0.01
    init_seed: int = 0             # torch seed of the shared seed's random init
    noseed_init_seed: int = 1      # a different init for the no-seed LLM
    seed_mix: dict = field(default_factory=lambda: {"arith": 1.0, "text_count": 1.0})
    vlm_mix: dict = field(default_factory=lambda: {"count": 2.0, "colour": 0.5, "shape": 0.5, "position": 1.5,
                                                   "arith": 0.4, "text_count": 0.4})
    llm_mix: dict = field(default_factory=lambda: {"arith": 1.0, "text_count": 1.0, "text_plus": 1.0})

    def as_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = self.shape.as_dict()
        return data


SMOKE = dict(seed_steps=2, vision_steps=2, vlm_steps=2, llm_steps=2, batch=8, warmup=1)
IMAGE_PIXELS = world.IMAGE_SIZE * world.IMAGE_SIZE


# -- models --------------------------------------------------------------------------------------
def make_tokenizer(recipe: Recipe):
    """The toy BPE, round-tripped through save/load so training sees exactly what the shipped folders
    give back (Qwen2Tokenizer re-imposes its own pre-tokeniser on load)."""
    tokenizer = build_tokenizer(world.corpus(), vocab_size=recipe.vocab_size, qwen_pretokenizer=True)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)


def make_processor(tokenizer) -> Qwen2_5_VLProcessor:
    """Fixed 56×56 input (min_pixels = max_pixels): one merged image token per grid cell, no resizing."""
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=IMAGE_PIXELS, max_pixels=IMAGE_PIXELS, patch_size=14,
                                              merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def _special(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))


def make_llm(recipe: Recipe, tokenizer, init_seed: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(**recipe.shape.as_dict(), vocab_size=len(tokenizer), rms_norm_eps=1e-6,
                         max_position_embeddings=512, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **_special(tokenizer))
    torch.manual_seed(init_seed)
    return Qwen2ForCausalLM(config)


def make_vlm(recipe: Recipe, tokenizer, llm: Qwen2ForCausalLM, init_seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL whose text config copies the LLM's (SHARED_TEXT_KEYS) and whose decoder and head
    start as copies of `llm`'s; the vision tower is freshly initialised."""
    ids = tokenizer.convert_tokens_to_ids
    text = {k: getattr(llm.config, k) for k in SHARED_TEXT_KEYS}
    text.update(_special(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "mrope_section": _mrope_section(recipe.shape)})
    v = recipe.vision_hidden
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=recipe.vision_depth, hidden_size=v, intermediate_size=2 * v,
                           num_heads=recipe.vision_heads, out_hidden_size=recipe.shape.hidden_size,
                           fullatt_block_indexes=[recipe.vision_depth - 1], window_size=world.IMAGE_SIZE,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=recipe.shape.tie_word_embeddings, **_special(tokenizer))
    torch.manual_seed(init_seed)
    vlm = Qwen2_5_VLForConditionalGeneration(config)
    vlm.get_decoder().load_state_dict(llm.get_decoder().state_dict(), strict=True)
    with torch.no_grad():
        vlm.get_output_embeddings().weight.copy_(llm.get_output_embeddings().weight)
    return vlm


# -- batches -------------------------------------------------------------------------------------
def prompt_text(tokenizer, item: world.Item) -> str:
    """The chat prompt exactly as merging.run.generate.build_inputs writes it (processor or tokenizer)."""
    if item.scene is not None:
        content = [{"type": "image"}, {"type": "text", "text": item.question}]
    else:
        content = [{"type": "text", "text": item.question}]
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def encode(processor, tokenizer, items: list[world.Item], full_loss: bool = False) -> dict:
    """Right-padded training inputs; labels on the answer + <|im_end|> (or on every token if full_loss)."""
    texts = [prompt_text(tokenizer, it) + it.answer + "<|im_end|>" for it in items]
    images = [it.image() for it in items if it.scene is not None]
    tokenizer.padding_side = "right"
    if images:
        batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    else:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = torch.full_like(batch["input_ids"], -100)
    lengths = batch["attention_mask"].sum(1).tolist()
    for i, it in enumerate(items):
        n = lengths[i] if full_loss else len(tokenizer(it.answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
        labels[i, lengths[i] - n:lengths[i]] = batch["input_ids"][i, lengths[i] - n:lengths[i]]
    batch = dict(batch)
    batch["labels"] = labels
    return batch


def _batches(mix: dict, seed: str, size: int):
    items = world.stream(mix, seed)
    while True:
        yield [next(items) for _ in range(size)]


# -- training ------------------------------------------------------------------------------------
def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine down to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run_stage(name: str, model: torch.nn.Module, groups: list[dict], steps: int, batches, loss_fn,
              recipe: Recipe, log: dict, every: int = 50) -> None:
    optim = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=recipe.weight_decay, foreach=True)
    base = [g["lr"] for g in optim.param_groups]
    model.train()
    start, history = time.perf_counter(), []
    for step in range(steps):
        for g, lr in zip(optim.param_groups, base):
            g["lr"] = lr * _schedule(step, steps, recipe.warmup)
        loss = loss_fn(next(batches))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optim.step()
        history.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            recent = history[-every:]
            print(f"[{name}] step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"({(time.perf_counter() - start) / (step + 1):.2f} s/step)", flush=True)
    model.eval()
    log["stages"][name] = {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                           "final_loss": round(sum(history[-every:]) / len(history[-every:]), 4)}


def _lm_loss(model, processor, tokenizer, full_loss=False):
    return lambda items: model(**encode(processor, tokenizer, items, full_loss=full_loss)).loss


def train_text(name: str, model, tokenizer, recipe: Recipe, steps: int, lr: float, mix: dict, log: dict,
               full_loss: bool = False, seed: str = "") -> None:
    run_stage(name, model, [{"params": list(model.parameters()), "lr": lr}], steps,
              _batches(mix, f"{world.TRAIN_SEED}/{seed or name}", recipe.batch),
              _lm_loss(model, None, tokenizer, full_loss), recipe, log)


def cell_labels(item: world.Item) -> list[tuple[int, int, int, int]]:
    """Per cell (row-major): (colour class, shape class, colour×shape class, cell index); class 0 = empty."""
    labels = []
    for i, t in enumerate(item.scene):
        if t is None:
            labels.append((0, 0, 0, i))
        else:
            colour, shape = list(world.COLOURS).index(t.colour), world.SHAPES.index(t.shape)
            labels.append((1 + colour, 1 + shape, 1 + colour * len(world.SHAPES) + shape, i))
    return labels


HEADS = (1 + len(world.COLOURS), 1 + len(world.SHAPES), 1 + len(world.COLOURS) * len(world.SHAPES),
         world.GRID ** 2)  # colour, shape, colour×shape, cell


def pretrain_vision(vlm, processor, recipe: Recipe, log: dict) -> dict:
    """Pre-train the vision tower with throw-away linear heads on each merged image token (one grid
    cell): its colour, its shape, the colour×shape pair (each with "empty"), and which cell it is (the
    tower has only relative, rotary positions; this makes each token say where it is — learnable because
    every pre-training scene holds at least one shape). Colour and shape heads make each attribute
    readable on its own (count and colour questions), the pair head makes a "green square" directly
    readable (position questions). Returns the heads' accuracies on 512 fresh scenes."""
    visual = vlm.model.visual
    torch.manual_seed(recipe.init_seed + 100)
    heads = torch.nn.Linear(recipe.shape.hidden_size, sum(HEADS))
    scenes = world.stream({"colour": 1.0}, f"{world.TRAIN_SEED}/vision")

    def batches():
        while True:
            yield [next(scenes) for _ in range(recipe.batch)]

    def logits_of(items):
        pix = processor.image_processor(images=[it.image() for it in items], return_tensors="pt")
        return heads(visual(pix["pixel_values"], grid_thw=pix["image_grid_thw"]).pooler_output).split(HEADS, dim=-1)

    def targets(items):
        return torch.tensor([c for it in items for c in cell_labels(it)]).unbind(-1)

    def loss_fn(items):
        return sum(torch.nn.functional.cross_entropy(logits, target)
                   for logits, target in zip(logits_of(items), targets(items)))

    params = list(visual.parameters()) + list(heads.parameters())
    run_stage("vision", visual, [{"params": params, "lr": recipe.vision_lr}], recipe.vision_steps, batches(),
              loss_fn, recipe, log)
    with torch.no_grad():
        test = world.items("colour", 512, seed="vision-check")
        hits = [logits.argmax(-1) == target for logits, target in zip(logits_of(test), targets(test))]
        acc = {"cell_colour": hits[0], "cell_shape": hits[1], "cell_joint": hits[2], "cell_position": hits[3],
               "cell_all": hits[0] & hits[1] & hits[2] & hits[3]}
        acc = {k: round(float(v.float().mean()), 4) for k, v in acc.items()}
    log["stages"]["vision"].update(acc)
    print(f"[vision] per-cell accuracy {acc}", flush=True)
    return acc


# -- the recipe ----------------------------------------------------------------------------------
STAGES = ("vlm", "llm", "llm_noseed")


def train_all(out: str | Path, recipe: Recipe = Recipe(), dtype: torch.dtype = torch.float32,
              quick_eval: int = 0, seed_from: str | Path | None = None, stages=STAGES) -> dict:
    """Run the recipe into `out`. `seed_from` reuses a saved seed (for experiments); `stages` picks
    which of the models after the seed to train."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    t0 = time.perf_counter()
    log = {"recipe": recipe.as_dict(), "stages": {}, "torch_threads": torch.get_num_threads()}
    tokenizer = make_tokenizer(recipe)
    processor = make_processor(tokenizer)
    log["vocab_size"] = len(tokenizer)

    seed = make_llm(recipe, tokenizer, recipe.init_seed)
    if seed_from:
        seed.load_state_dict(Qwen2ForCausalLM.from_pretrained(seed_from, dtype=torch.float32).state_dict())
        log["seed_from"] = str(seed_from)
    else:
        train_text("seed", seed, tokenizer, recipe, recipe.seed_steps, recipe.lr, recipe.seed_mix, log,
                   full_loss=True)
        save_llm(seed, tokenizer, out / "seed", dtype)
    models = {}

    if "vlm" in stages:
        models["vlm"] = vlm = make_vlm(recipe, tokenizer, seed, recipe.init_seed + 1)
        pretrain_vision(vlm, processor, recipe, log)
        visual = list(vlm.model.visual.parameters())
        ids = {id(p) for p in visual}
        groups = [{"params": [p for p in vlm.parameters() if id(p) not in ids], "lr": recipe.vlm_lr}]
        if recipe.vlm_vision_lr > 0:
            groups.append({"params": visual, "lr": recipe.vlm_vision_lr})
        else:
            vlm.model.visual.requires_grad_(False)
        run_stage("vlm", vlm, groups, recipe.vlm_steps, _batches(recipe.vlm_mix, f"{world.TRAIN_SEED}/vlm", recipe.batch),
                  _lm_loss(vlm, processor, tokenizer), recipe, log)
        vlm.requires_grad_(True)
        save_vlm(vlm, processor, out / "vlm", dtype)

    if "llm" in stages:
        models["llm"] = llm = make_llm(recipe, tokenizer, recipe.init_seed)
        llm.load_state_dict(seed.state_dict())
        train_text("llm", llm, tokenizer, recipe, recipe.llm_steps, recipe.finetune_lr, recipe.llm_mix, log)
        save_llm(llm, tokenizer, out / "llm", dtype)

    if "llm_noseed" in stages:  # seed stage + LLM stage again, same data order, only the init differs
        models["llm_noseed"] = noseed = make_llm(recipe, tokenizer, recipe.noseed_init_seed)
        train_text("noseed_pretrain", noseed, tokenizer, recipe, recipe.seed_steps, recipe.lr, recipe.seed_mix, log,
                   full_loss=True, seed="seed")
        train_text("llm_noseed", noseed, tokenizer, recipe, recipe.llm_steps, recipe.finetune_lr, recipe.llm_mix, log,
                   seed="llm")
        save_llm(noseed, tokenizer, out / "llm_noseed", dtype)

    log["total_seconds"] = round(time.perf_counter() - t0, 1)
    if quick_eval:
        log["quick_eval"] = {name: accuracy_table(model, processor, quick_eval) if name == "vlm" else
                             accuracy_table(model, tokenizer, quick_eval, kinds=world.TEXT)
                             for name, model in models.items()}
        print(json.dumps(log["quick_eval"], indent=1), flush=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"done in {log['total_seconds']:.0f} s → {out}", flush=True)
    return log


def save_vlm(vlm, processor, path: Path, dtype: torch.dtype) -> None:
    copy.deepcopy(vlm).to(dtype).save_pretrained(path)  # a copy: the in-memory model stays fp32
    processor.save_pretrained(path)


def save_llm(llm, tokenizer, path: Path, dtype: torch.dtype) -> None:
    copy.deepcopy(llm).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="assets/toy", help="folder for vlm/, llm/, llm_noseed/ and train_log.json")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage, small batches (seconds)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: on a shared 2-core machine 2 threads ran 8× slower)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    parser.add_argument("--quick-eval", type=int, default=0, help="after training, score N items per kind")
    parser.add_argument("--seed-from", help="reuse the seed saved in this folder instead of training one")
    parser.add_argument("--stages", default=",".join(STAGES), help="models to train after the seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe fields (numbers only), e.g. vlm_steps=600")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    recipe = Recipe()
    if args.smoke:
        recipe = replace(recipe, **SMOKE)
    for pair in args.set:
        key, _, value = pair.partition("=")
        current = getattr(recipe, key)
        if isinstance(current, bool):
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(current, int):
            value = int(float(value))
        else:
            value = float(value)
        recipe = replace(recipe, **{key: value})
    train_all(args.out, recipe, getattr(torch, args.dtype), quick_eval=args.quick_eval, seed_from=args.seed_from,
              stages=tuple(args.stages.split(",")))


if __name__ == "__main__":
    main()
