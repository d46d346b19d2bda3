"""A small byte-level BPE tokenizer, trained locally with `tokenizers`, wrapped as `Qwen2Tokenizer`.

It carries Qwen's chat and vision special tokens and a ChatML template, so the real Qwen2.5-VL
processor accepts it and chat prompts look like the reference pair's.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# ChatML, as Qwen2.5-VL writes it: an image part becomes <|vision_start|><|image_pad|><|vision_end|>
# and the processor expands <|image_pad|> to one token per merged image patch.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_CORPUS = [
    "user assistant system", "What is in the image? Describe the picture.",
    "How many shapes are there? red green blue yellow circle square triangle",
    "one two three four five six seven eight nine ten zero",
    "0 1 2 3 4 5 6 7 8 9 + - = ? plus minus equals answer",
    "The quick brown fox jumps over the lazy dog.",
]


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400, *,
                    qwen_pretokenizer: bool = False) -> Qwen2TokenizerFast:
    """Train a byte-level BPE on `corpus` (deterministic) and wrap it for transformers.

    `qwen_pretokenizer=True` trains with the normaliser and pre-tokeniser (Qwen2's split regex: digits
    one by one) that `Qwen2Tokenizer` imposes when the saved tokenizer is loaded again, so the tokenizer
    in memory and the one read back from disk cut text identically. The default (plain byte-level
    pre-tokenisation) is kept for the small random test pairs, where the difference does not matter.
    """
    bpe = Tokenizer(models.BPE(unk_token=None))
    if qwen_pretokenizer:
        bpe.normalizer = normalizers.NFC()
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus or DEFAULT_CORPUS, trainer=trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
