"""/health and the Prometheus metrics: every family named in the API's contract is exposed,
and the request, token, latency and adapter figures move with traffic."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.platform.conftest import openai_client, upload_adapter

FAMILIES = {
    "loraplex_http_requests",
    "loraplex_time_to_first_token_seconds",
    "loraplex_time_per_output_token_seconds",
    "loraplex_e2e_request_latency_seconds",
    "loraplex_prompt_tokens",
    "loraplex_generation_tokens",
    "loraplex_num_requests_running",
    "loraplex_num_requests_waiting",
    "loraplex_kv_cache_usage_ratio",
    "loraplex_lora_slots_used",
    "loraplex_lora_slots_total",
    "loraplex_adapter_loads",
    "loraplex_adapter_load_seconds",
    "loraplex_adapter_evictions",
    "loraplex_tenant_requests",
    "loraplex_tenant_tokens",
    "loraplex_requests_rejected",
    "loraplex_engine_healthy",
}


def scrape(http) -> dict[tuple[str, tuple], float]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health(http):
    response = http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_metrics_move_with_traffic(http, platform, tenant, peft_adapters):
    families = {f.name for f in text_string_to_metric_families(http.get("/metrics").text)}
    assert families >= FAMILIES, FAMILIES - families

    before = scrape(http)
    assert upload_adapter(http, tenant, "measured", peft_adapters[1]).status_code == 201
    client = openai_client(platform, tenant.key)
    client.completions.create(
        model="measured", prompt="one two", max_tokens=6, extra_body={"ignore_eos": True}
    )
    client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    http.get("/v1/models")  # a 401
    after = scrape(http)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        delta(
            "loraplex_http_requests_total", endpoint="/v1/completions", method="POST", status="200"
        )
        == 1
    )
    assert (
        delta("loraplex_http_requests_total", endpoint="/v1/models", method="GET", status="401")
        == 1
    )
    assert (
        delta("loraplex_http_requests_total", endpoint="/v1/adapters", method="POST", status="201")
        == 1
    )
    assert delta("loraplex_generation_tokens_total") == 10
    assert delta("loraplex_tenant_requests_total", tenant=tenant.name) == 2
    assert delta("loraplex_tenant_tokens_total", tenant=tenant.name, kind="completion") == 10
    assert delta("loraplex_tenant_tokens_total", tenant=tenant.name, kind="prompt") > 0
    assert delta("loraplex_prompt_tokens_total") == delta(
        "loraplex_tenant_tokens_total", tenant=tenant.name, kind="prompt"
    )
    for histogram in ("time_to_first_token", "e2e_request_latency", "time_per_output_token"):
        assert delta(f"loraplex_{histogram}_seconds_count") == 2
    # The new adapter came from the object store to disk, into CPU memory, into a slot.
    for tier in ("disk", "cpu", "gpu"):
        assert delta("loraplex_adapter_loads_total", tier=tier) >= 1, tier
    assert delta("loraplex_adapter_load_seconds_count", tier="disk") == 1
    slot_loads = delta("loraplex_adapter_slot_load_seconds_count")
    assert slot_loads == delta("loraplex_adapter_loads_total", tier="gpu") >= 1
    assert delta("loraplex_adapter_slot_load_seconds_sum") > 0
    assert value(after, "loraplex_lora_slots_total") == 2
    assert 1 <= value(after, "loraplex_lora_slots_used") <= 2
    assert value(after, "loraplex_engine_healthy") == 1
    assert value(after, "loraplex_num_requests_running") == 0
    assert not any(re.search(r"lpx_", str(key)) for key in after)  # no key ever in a label
