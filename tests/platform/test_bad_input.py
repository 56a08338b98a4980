"""Malformed or out-of-range requests are 400s with a message naming the problem, never a 500,
and never stop the engine."""

from __future__ import annotations

import pytest

from tests.platform.conftest import MAX_MODEL_LEN

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}

BAD_COMPLETIONS = [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 5}, "n"),  # above the server's cap of 4
    ({"n": "2"}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": MAX_MODEL_LEN}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"logprobs": 21}, "logprobs"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": 5}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": [-1, 5]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": "word " * (2 * MAX_MODEL_LEN)}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"model": ""}, "model"),
    ({"min_tokens": 5}, "min_tokens"),  # above max_tokens
    ({"top_k": 0}, "top_k"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"echo": True, "logprobs": 1}, "echo"),
    ({"stream_options": {"include_usage": "very"}}, "stream_options"),
]

BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"content": "hi"}]}, "messages"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages",
    ),
    ({"messages": "hi"}, "messages"),
    ({"max_completion_tokens": 10**9}, "max_completion_tokens"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "word " * (2 * MAX_MODEL_LEN)}]}, "messages"),
]


def _assert_400(response, field):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in error["message"] or error["param"] == field or field in (error["param"] or "")


@pytest.mark.parametrize(("change", "field"), BAD_COMPLETIONS)
def test_bad_completion_requests_are_400(http, tenant, change, field):
    _assert_400(
        http.post("/v1/completions", json={**COMPLETION, **change}, headers=tenant.headers), field
    )


@pytest.mark.parametrize(("change", "field"), BAD_CHATS)
def test_bad_chat_requests_are_400(http, tenant, change, field):
    _assert_400(
        http.post("/v1/chat/completions", json={**CHAT, **change}, headers=tenant.headers), field
    )


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_bodies_are_400(http, tenant, path):
    for body in (b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"):
        response = http.post(
            path, content=body, headers={**tenant.headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["message"]
    missing_model = http.post(path, json={"prompt": "x", "messages": []}, headers=tenant.headers)
    _assert_400(missing_model, "model")


def test_unknown_models_are_404_and_the_engine_keeps_serving(http, tenant):
    for model in ("gpt-4", "Not A Name", "tiny-llama:1", "x" * 300, "a:0"):
        response = http.post(
            "/v1/completions", json={**COMPLETION, "model": model}, headers=tenant.headers
        )
        assert response.status_code in (400, 404), response.text
    assert (
        http.post(
            "/v1/completions", json={**COMPLETION, "model": "gpt-4"}, headers=tenant.headers
        ).json()["error"]["code"]
        == "model_not_found"
    )
    assert http.get("/health").status_code == 200
    served = http.post("/v1/completions", json=COMPLETION, headers=tenant.headers)
    assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] >= 1


def test_unknown_routes_and_methods_answer_in_openai_shape(http, tenant):
    missing = http.get("/v1/nothing-here", headers=tenant.headers)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = http.get("/v1/completions", headers=tenant.headers)
    assert wrong.status_code == 405 and wrong.json()["error"]["message"]
