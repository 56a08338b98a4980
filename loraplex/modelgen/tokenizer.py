"""A byte-level BPE tokenizer trained locally, saved in the Hugging Face layout.

Like Llama-3's tokenizer it prepends `<|begin_of_text|>` to every encoded text (a
TemplateProcessing post-processor) and its vocabulary is exactly the model's `vocab_size`, so
every id a model can sample decodes to text. Presets whose vocabulary is larger than what the
corpus supports are padded with filler words that decode to text but that encoding never emits.
"""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from loraplex.modelgen.corpus import corpus_lines

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
# Trained first, so they take ids 0.. in this order for every vocabulary size.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN)
BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID = 0, 1, 2

# Merges beyond this learn little from a corpus of this size; larger vocabularies are filled.
MAX_TRAINED_VOCAB = 8192

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# ChatML turns; the content may be a string or a list of OpenAI-style parts of which the text
# parts are kept. bos comes from the template, as with Llama-3, because apply_chat_template
# encodes without adding special tokens.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# Qwen2's split (letters, single digits, punctuation runs, whitespace): transformers rebuilds
# this exact pipeline for qwen2 checkpoints, so using it for every architecture keeps
# AutoTokenizer and the raw tokenizer.json in agreement.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_FILLER_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def _filler_words():
    """Space-prefixed pseudo-words (byte-level 'Ġ' is the space), shortest first."""
    length = 2
    while True:
        for syllables in product(_FILLER_SYLLABLES, repeat=length):
            yield "\u0120" + "".join(syllables)
        length += 1


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """Trains the byte-level BPE on the built-in corpus and sizes it to exactly `vocab_size`."""
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum}, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, MAX_TRAINED_VOCAB),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
    )
    if tokenizer.get_vocab_size() < vocab_size:
        tokenizer = _fill_vocab(tokenizer, vocab_size)
    return tokenizer


def _fill_vocab(tokenizer: Tokenizer, vocab_size: int) -> Tokenizer:
    state = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    next_id = len(vocab)
    words = _filler_words()
    while next_id < vocab_size:
        word = next(words)
        if word not in vocab:
            vocab[word] = next_id
            next_id += 1
    return Tokenizer.from_str(json.dumps(state))


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    added_tokens = {
        str(tokenizer.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    }
    special_tokens_map = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "additional_special_tokens": [IM_START_TOKEN, IM_END_TOKEN],
    }
    tokenizer_config = {
        "added_tokens_decoder": added_tokens,
        **special_tokens_map,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        # Byte-level BPE never needs one; explicit so that classes defaulting to one add none.
        "unk_token": None,
    }
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
