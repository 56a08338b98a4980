"""Twenty streaming clients cut mid-stream: every request is aborted, its KV blocks and adapter
slot reference freed, and the server serves the next request normally."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.platform.conftest import openai_client, upload_adapter

CLIENTS = 20


async def _cut_stream(url: str, headers: dict, body: dict, path: str) -> int:
    """Read a few events of a stream, then drop the connection; returns the events read."""
    events = 0
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        client.stream("POST", path, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["choices"] is not None
                events += 1
                if events == 3:
                    break
    return events


def test_disconnect_storm_frees_everything(http, platform, tenant, peft_adapters):
    assert upload_adapter(http, tenant, "storm", peft_adapters[0]).status_code == 201
    long = {"max_tokens": 200, "ignore_eos": True, "stream": True}
    bodies = []
    for index in range(CLIENTS):
        model = "storm" if index % 2 else "tiny-llama"
        if index % 4 < 2:
            bodies.append(("/v1/completions", {"model": model, "prompt": f"story {index}", **long}))
        else:
            messages = [{"role": "user", "content": f"story {index}"}]
            bodies.append(("/v1/chat/completions", {"model": model, "messages": messages, **long}))

    async def storm():
        return await asyncio.gather(
            *(_cut_stream(platform.url, tenant.headers, body, path) for path, body in bodies)
        )

    assert asyncio.run(storm()) == [3] * CLIENTS

    scheduler = platform.server.state.engine.engine.scheduler
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = http.get("/admin/v1/engine", headers=platform.admin_headers).json()
        if (engine["num_running"], engine["num_waiting"], engine["sequences_in_flight"]) == (
            0,
            0,
            0,
        ) and engine["kv_cache_usage"] == 0:
            break
        time.sleep(0.05)
    assert (engine["num_running"], engine["num_waiting"], engine["kv_cache_usage"]) == (0, 0, 0.0)
    assert engine["sequences_in_flight"] == 0
    assert sum(scheduler.running_loras.values()) == 0  # no slot is held for a gone request

    # The cut requests ran for a few tokens only, not to max_tokens.
    usage = http.get(f"/admin/v1/usage?tenant_id={tenant.id}", headers=platform.admin_headers)
    rows = usage.json()["data"]
    assert sum(row["requests"] for row in rows) == CLIENTS
    assert sum(row["completion_tokens"] for row in rows) < CLIENTS * 200 // 2

    client = openai_client(platform, tenant.key)
    after = client.chat.completions.create(
        model="storm",
        messages=[{"role": "user", "content": "still there?"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    assert after.usage.completion_tokens == 5 and after.choices[0].finish_reason == "length"


def test_a_non_streaming_client_that_leaves_aborts_its_request(http, platform, tenant):
    # 32 sequences of 240 tokens: far longer than the client waits.
    prompts = [f"patience {i}" for i in range(8)]
    body = {"model": "tiny-llama", "prompt": prompts, "n": 4, "max_tokens": 240, "ignore_eos": True}
    with httpx.Client(base_url=platform.url, timeout=0.2) as impatient:
        try:
            impatient.post("/v1/completions", json=body, headers=tenant.headers)
        except httpx.TimeoutException:
            pass
        else:
            raise AssertionError("the request should have outlived the client's timeout")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        engine = http.get("/admin/v1/engine", headers=platform.admin_headers).json()
        if engine["sequences_in_flight"] == 0 and engine["num_running"] == 0:
            break
        time.sleep(0.05)
    assert (engine["sequences_in_flight"], engine["num_running"], engine["kv_cache_usage"]) == (
        0,
        0,
        0.0,
    )
    usage = http.get(f"/admin/v1/usage?tenant_id={tenant.id}", headers=platform.admin_headers)
    (row,) = usage.json()["data"]
    assert row["requests"] == 1 and row["completion_tokens"] < 32 * 240 // 2
