"""LLM.chat applies the tokenizer's chat template, for one conversation or several."""

import pytest

from loraplex import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_model_dirs, test_device):
    return LLM(tiny_model_dirs["qwen2"], dtype="float32", device=test_device, max_model_len=256)


def test_chat_equals_generate_on_the_templated_prompt(llm):
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    expected = llm.generate([tokenizer(text, add_special_tokens=False).input_ids], GREEDY)
    chat = llm.chat(conversation, GREEDY)
    assert chat[0].outputs[0].token_ids == expected[0].outputs[0].token_ids
    assert chat[0].prompt_token_ids == tokenizer(text, add_special_tokens=False).input_ids


def test_chat_takes_a_list_of_conversations(llm):
    conversations = [
        [{"role": "user", "content": "one"}],
        [{"role": "user", "content": "two"}],
    ]
    outputs = llm.chat(conversations, GREEDY)
    singles = [llm.chat(c, GREEDY)[0] for c in conversations]
    assert [o.outputs[0].token_ids for o in outputs] == [s.outputs[0].token_ids for s in singles]


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user"}], ["hello"], [[{"content": "x"}]]],
)
def test_malformed_messages(llm, messages):
    with pytest.raises(ValueError, match="message|conversation|role"):
        llm.chat(messages, GREEDY)
