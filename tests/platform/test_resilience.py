"""A server of its own with a tiny queue: overload answers 503 at once and recovers; a dead
engine fails requests with 503 and /health says so."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest

from tests.platform.conftest import create_tenant, start_platform

LONG = {"model": "tiny-llama", "prompt": "go on", "max_tokens": 1500, "ignore_eos": True}


@pytest.fixture(scope="module")
def small_platform(tmp_path_factory, model_dir, test_device):
    running = start_platform(
        tmp_path_factory.mktemp("small"),
        model_dir,
        test_device,
        max_model_len=2048,
        max_num_seqs=2,
        max_waiting_requests=1,
        overload_retry_after_seconds=2,
    )
    yield running
    running.server.stop()


@pytest.fixture(scope="module")
def small_http(small_platform):
    with httpx.Client(base_url=small_platform.url, timeout=60) as client:
        yield client


def _wait_until_idle(http, admin_headers, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        engine = http.get("/admin/v1/engine", headers=admin_headers).json()
        idle = (engine["num_running"], engine["num_waiting"], engine["sequences_in_flight"])
        if idle == (0, 0, 0) and engine["kv_cache_usage"] == 0 or time.monotonic() > deadline:
            return engine
        time.sleep(0.05)


def test_overload_is_refused_at_once_and_the_server_recovers(small_platform, small_http):
    tenant = create_tenant(small_http, small_platform)
    with contextlib.ExitStack() as streams:
        for _ in range(3):  # two running, one waiting: the queue is full
            response = streams.enter_context(
                small_http.stream(
                    "POST", "/v1/completions", json={**LONG, "stream": True}, headers=tenant.headers
                )
            )
            assert response.status_code == 200
        started = time.monotonic()
        refused = small_http.post("/v1/completions", json=LONG, headers=tenant.headers)
        assert refused.status_code == 503 and time.monotonic() - started < 2
        assert refused.headers["Retry-After"] == "2"
        assert refused.json()["error"]["code"] == "overloaded"
        chat = small_http.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}]},
            headers=tenant.headers,
        )
        assert chat.status_code == 503
    engine = _wait_until_idle(small_http, small_platform.admin_headers)
    assert (engine["num_running"], engine["sequences_in_flight"], engine["kv_cache_usage"]) == (
        0,
        0,
        0.0,
    )
    served = small_http.post(
        "/v1/completions", json={**LONG, "max_tokens": 3}, headers=tenant.headers
    )
    assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 3
    metrics = small_http.get("/metrics").text
    assert 'loraplex_requests_rejected_total{reason="overloaded"} 2.0' in metrics


def test_a_dead_engine_answers_503_and_health_says_so(small_platform, small_http):
    tenant = create_tenant(small_http, small_platform)
    assert small_http.get("/health").status_code == 200

    def broken_step():
        raise RuntimeError("device lost")

    small_platform.server.state.engine.engine.step = broken_step
    failed = small_http.post("/v1/completions", json=LONG, headers=tenant.headers)
    assert failed.status_code == 503 and "device lost" in failed.json()["error"]["message"]
    health = small_http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "engine_dead"
    again = small_http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
        headers=tenant.headers,
    )
    assert again.status_code == 503
    # The rest of the service still answers, and says what happened.
    assert (
        small_http.get("/admin/v1/engine", headers=small_platform.admin_headers).json()["healthy"]
        is False
    )
    assert "loraplex_engine_healthy 0.0" in small_http.get("/metrics").text
    assert small_http.get("/v1/adapters", headers=tenant.headers).status_code == 200
