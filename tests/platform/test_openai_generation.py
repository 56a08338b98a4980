"""Completions and chat through the official openai client, on the base model and on uploaded
adapters, streamed and not; greedy output must equal the offline `LLM` for the same adapter."""

from __future__ import annotations

import pytest

from loraplex import LLM, LoRARequest, SamplingParams
from tests.platform.conftest import MAX_MODEL_LEN, openai_client, upload_adapter

PROMPT = "The quick brown fox"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something about foxes."},
]


@pytest.fixture(scope="module")
def offline(model_dir, test_device) -> LLM:
    return LLM(
        model_dir,
        dtype="float32",
        device=test_device,
        max_model_len=MAX_MODEL_LEN,
        enable_lora=True,
        max_lora_rank=16,
    )


@pytest.fixture(scope="module")
def chat_stop_ids(offline) -> list[int]:
    return [offline.get_tokenizer().convert_tokens_to_ids("<|im_end|>")]


@pytest.fixture(scope="module")
def adapter_account(http, platform, peft_adapters):
    """A tenant with adapter "fox" (two versions: the second is a different adapter)."""
    from tests.platform.conftest import create_tenant

    account = create_tenant(http, platform)
    for adapter in peft_adapters:
        response = upload_adapter(http, account, "fox", adapter)
        assert response.status_code == 201, response.text
    return account


def offline_text(offline, prompt, params, lora=None):
    return offline.generate(prompt, params, lora_request=lora)[0].outputs[0]


def lora(adapter) -> LoRARequest:
    """The offline engine's request for the same adapter files the server was given."""
    lora_id = 1 + int(adapter.path.name.removeprefix("adapter"))
    return LoRARequest(adapter.path.name, lora_id, str(adapter.path))


def test_completion_on_base_model_equals_offline_streamed_or_not(platform, tenant, offline):
    client = openai_client(platform, tenant.key)
    expected = offline_text(offline, PROMPT, SamplingParams(temperature=0, max_tokens=20))

    response = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=20
    )
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    usage = response.usage
    assert usage.completion_tokens == len(expected.token_ids)
    assert usage.prompt_tokens == len(offline.get_tokenizer()(PROMPT).input_ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = client.completions.create(
        model="tiny-llama",
        prompt=PROMPT,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == expected.finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == usage.total_tokens


def test_adapter_completions_and_chat_equal_offline_with_the_same_adapter(
    platform, adapter_account, peft_adapters, offline, chat_stop_ids
):
    client = openai_client(platform, adapter_account.key)
    first, second = peft_adapters
    greedy = SamplingParams(temperature=0, max_tokens=24)
    base = offline_text(offline, PROMPT, greedy)
    for model, adapter in (("fox", second), ("fox:2", second), ("fox:1", first)):
        expected = offline_text(offline, PROMPT, greedy, lora(adapter))
        response = client.completions.create(
            model=model, prompt=PROMPT, temperature=0, max_tokens=24
        )
        assert response.model == model
        assert response.choices[0].text == expected.text, model
        assert response.usage.completion_tokens == len(expected.token_ids)
    assert offline_text(offline, PROMPT, greedy, lora(first)).token_ids != base.token_ids

    chat_params = SamplingParams(temperature=0, max_tokens=16, stop_token_ids=chat_stop_ids)
    expected_chat = offline.chat(MESSAGES, chat_params, lora_request=lora(first))[0].outputs[0]
    response = client.chat.completions.create(
        model="fox:1", messages=MESSAGES, temperature=0, max_completion_tokens=16
    )
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected_chat.text
    assert response.usage.completion_tokens == len(expected_chat.token_ids)

    stream = client.chat.completions.create(
        model="fox:1",
        messages=MESSAGES,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == expected_chat.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    assert chunks[-1].usage.completion_tokens == len(expected_chat.token_ids)


def test_sampling_options_pass_through_to_the_engine(platform, tenant, offline):
    client = openai_client(platform, tenant.key)
    options = dict(temperature=0.9, top_p=0.8, seed=7, presence_penalty=0.5, frequency_penalty=0.3)
    params = SamplingParams(max_tokens=12, n=3, **options)
    expected = offline.generate(PROMPT, params)[0].outputs
    response = client.completions.create(
        model="tiny-llama", prompt=PROMPT, max_tokens=12, n=3, user="someone", **options
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert [c.text for c in response.choices] == [e.text for e in expected]
    assert len({c.text for c in response.choices}) > 1  # seed + index: the samples differ


def test_stop_strings_and_max_tokens(platform, tenant, offline):
    client = openai_client(platform, tenant.key)
    unstopped = offline_text(offline, PROMPT, SamplingParams(temperature=0, max_tokens=20)).text
    stop = unstopped.strip()[3:6]
    response = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=20, stop=[stop]
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and stop not in choice.text
    assert unstopped.startswith(choice.text)
    short = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=3
    )
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_completion_logprobs_echo_and_prompt_batches(platform, tenant, offline):
    client = openai_client(platform, tenant.key)
    params = SamplingParams(temperature=0, max_tokens=5, logprobs=3)
    expected = offline_text(offline, PROMPT, params)
    response = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=5, logprobs=3
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == 5 and "".join(logprobs.tokens) == response.choices[0].text
    for token_id, entry, logprob, top in zip(
        expected.token_ids,
        expected.logprobs,
        logprobs.token_logprobs,
        logprobs.top_logprobs,
        strict=True,
    ):
        assert logprob == pytest.approx(entry[token_id])
        assert len(top) == 3 and max(top.values()) == pytest.approx(max(entry.values()))
    assert logprobs.text_offset == sorted(logprobs.text_offset)

    echoed = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=5, echo=True
    )
    assert echoed.choices[0].text == PROMPT + expected.text
    streamed = client.completions.create(
        model="tiny-llama", prompt=PROMPT, temperature=0, max_tokens=5, echo=True, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == PROMPT + expected.text

    for prompts in (["one two three", "a b c d"], [[5, 6, 7, 8], [9, 10]]):
        batch = client.completions.create(
            model="tiny-llama", prompt=prompts, temperature=0, max_tokens=6, n=2
        )
        assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
        for index, prompt in enumerate(prompts):
            want = offline_text(offline, prompt, SamplingParams(temperature=0, max_tokens=6))
            got = [c.text for c in batch.choices if c.index // 2 == index]
            assert got == [want.text, want.text]


def test_chat_logprobs_and_default_max_tokens(platform, tenant, offline, chat_stop_ids):
    client = openai_client(platform, tenant.key)
    response = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        max_tokens=4,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 4
    assert all(len(token.top_logprobs) == 2 for token in content)
    assert all(
        token.logprob <= 0 and token.bytes == list(token.token.encode()) for token in content
    )
    assert "".join(token.token for token in content) == response.choices[0].message.content

    # Without max_tokens the answer may use the rest of the context; it ends at the turn's end.
    expected = offline.chat(
        MESSAGES, SamplingParams(temperature=0, max_tokens=None, stop_token_ids=chat_stop_ids)
    )[0].outputs[0]
    unbounded = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, temperature=0)
    assert unbounded.choices[0].message.content == expected.text
    assert unbounded.choices[0].finish_reason == expected.finish_reason
