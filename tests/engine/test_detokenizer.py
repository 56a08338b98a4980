from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from loraplex.engine.detokenizer import IncrementalDetokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus Köln: Straße, Äpfel, Öl und Übermut.",
    "日本語のテキストを少しだけ書きます。東京は大きい。",
    "Emoji: 🤖🚀✨ and symbols like € £ ¥ → ∑ ∞.",
    "Ελληνικά γράμματα και русский текст тоже.",
    "def add(a, b):\n    return a + b  # ok",
]
SPECIAL_TOKENS = ["<|eos|>", "<|pad|>", "<|user|>"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    # A small vocabulary leaves most non-ASCII characters split over several byte tokens.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>"],
        clean_up_tokenization_spaces=False,
    )


def detokenize(detokenizer: IncrementalDetokenizer, token_ids: list[int]) -> list[str]:
    pieces = [detokenizer.add_token(token_id) for token_id in token_ids]
    pieces.append(detokenizer.flush())
    return pieces


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_token_sequences_match_full_decode(
    tokenizer: PreTrainedTokenizerFast, skip_special_tokens: bool
) -> None:
    vocab = len(tokenizer)
    rng = random.Random(0)
    for _ in range(300):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 12))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        detokenizer = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens)
        text = "".join(detokenize(detokenizer, output))
        assert text == tokenizer.decode(output, skip_special_tokens=skip_special_tokens)


def test_split_characters_are_held_back_until_complete(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    text = "".join(CORPUS[1:5])
    output = tokenizer.encode(text)
    split = [token for token in output if tokenizer.decode([token]).endswith("\ufffd")]
    assert split, "the fixture must split some characters over several tokens"
    prompt = tokenizer.encode("Hello there")
    pieces = detokenize(IncrementalDetokenizer(tokenizer, prompt), output)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces[-1] == "", "complete text leaves nothing to flush"


def test_special_tokens_are_skipped_or_kept(tokenizer: PreTrainedTokenizerFast) -> None:
    eos = tokenizer.convert_tokens_to_ids("<|eos|>")
    output = [*tokenizer.encode(" Straße"), eos]
    skipped = detokenize(IncrementalDetokenizer(tokenizer, [], True), output)
    kept = detokenize(IncrementalDetokenizer(tokenizer, [], False), output)
    assert "".join(skipped) == " Straße"
    assert "".join(kept) == " Straße<|eos|>"


def test_prompt_ending_inside_a_character_does_not_leak_into_the_output(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    ids = tokenizer.encode("🤖🤖🤖")
    for cut in range(1, len(ids)):
        detokenizer = IncrementalDetokenizer(tokenizer, ids[:cut])
        text = "".join(detokenize(detokenizer, ids[cut:]))
        assert text == tokenizer.decode(ids[cut:])


class _CountingBackend:
    def __init__(self, backend: Tokenizer) -> None:
        self.backend = backend
        self.decoded_tokens = 0

    def decode(self, token_ids: list[int], skip_special_tokens: bool) -> str:
        self.decoded_tokens += len(token_ids)
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)


class _CountingTokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.backend_tokenizer = _CountingBackend(tokenizer.backend_tokenizer)


def test_work_per_token_does_not_grow_with_the_output(tokenizer: PreTrainedTokenizerFast) -> None:
    output = tokenizer.encode(" ".join(CORPUS) * 10)
    counting = _CountingTokenizer(tokenizer)
    pieces = detokenize(IncrementalDetokenizer(counting, []), output)
    assert "".join(pieces) == tokenizer.decode(output)
    # Decoding the whole output each step would decode len(output)**2 / 2 tokens.
    assert counting.backend_tokenizer.decoded_tokens < 12 * len(output)


def test_a_slow_tokenizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a fast tokenizer"):
        IncrementalDetokenizer(object(), [1, 2])
