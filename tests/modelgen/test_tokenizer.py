"""The locally trained tokenizer: special tokens, bos handling, chat template, vocabulary size."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from loraplex.modelgen import ARCHITECTURES
from loraplex.modelgen.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END_TOKEN,
    IM_START_TOKEN,
    MAX_TRAINED_VOCAB,
    PAD_TOKEN,
    build_tokenizer,
)

TEXTS = [
    "Hello, my name is Alice and I work in the garden.",
    "def add(a, b):\n    return a + b\n",
    "Grüße aus München — 你好, мир! 🙂 12345.67",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["llama"])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_auto_tokenizer_matches_tokenizer_json_for_every_arch(
    tiny_models, transformers_warnings, arch
):
    # transformers picks an architecture's own tokenizer class for some (Qwen2Tokenizer), which
    # rebuilds the pipeline; the saved one is built so that both encode alike.
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    raw = Tokenizer.from_file(str(tiny_models[arch] / "tokenizer.json"))
    assert transformers_warnings == []
    assert len(tokenizer) == raw.get_vocab_size() == 2048
    assert tokenizer.unk_token is None
    for text in [*TEXTS, "It's 2024!\n\n\tx  = 1,234.5;  I'M done  ", "e\u0301t\u00e9"]:
        assert tokenizer(text).input_ids == raw.encode(text).ids, text


def test_special_tokens_have_fixed_ids_inside_the_vocabulary(tokenizer):
    assert len(tokenizer) == 2048
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids([IM_START_TOKEN, IM_END_TOKEN]) == [3, 4]
    assert tokenizer.model_max_length == 2048


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_starts_with_one_bos_and_round_trips(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.bos_token_id not in ids[1:]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(text, add_special_tokens=False).input_ids == ids[1:]


def test_common_words_are_single_tokens(tokenizer):
    assert len(tokenizer(" the garden", add_special_tokens=False).input_ids) == 2


def test_chat_template_is_chatml_with_generation_prompt(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    without_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert without_prompt == text.removesuffix("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = ids["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids[1] == tokenizer.convert_tokens_to_ids(IM_START_TOKEN)
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END_TOKEN)) == 2


def test_chat_template_keeps_the_text_parts_of_list_contents(tokenizer):
    parts = [
        {"type": "text", "text": "Look "},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "here"},
    ]
    text = tokenizer.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
    assert text == "<|begin_of_text|><|im_start|>user\nLook here<|im_end|>\n"


def test_saved_files_use_the_fast_tokenizer_layout(tiny_models):
    folder = tiny_models["llama"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )
    assert config["model_max_length"] == 2048
    assert "add_generation_prompt" in config["chat_template"]
    special = json.loads((folder / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == [IM_START_TOKEN, IM_END_TOKEN]
    processor = json.loads((folder / "tokenizer.json").read_text())["post_processor"]
    assert processor["type"] == "TemplateProcessing"


def test_large_vocabularies_are_filled_with_decodable_words():
    tokenizer = build_tokenizer(32000)
    assert tokenizer.get_vocab_size() == 32000
    filler = tokenizer.decode([31999])
    assert filler.startswith(" ") and filler[1:].isalpha()
    # Encoding only ever uses the trained part of the vocabulary.
    ids = tokenizer.encode(" ".join(TEXTS) + filler).ids
    assert max(ids) < MAX_TRAINED_VOCAB


def test_training_is_deterministic():
    assert build_tokenizer(2048).to_str() == build_tokenizer(2048).to_str()


def test_too_small_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        build_tokenizer(100)
