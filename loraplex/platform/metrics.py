"""Prometheus metrics of the service, in a registry of its own (one per app, so tests and
several apps in one process never share counters).

Request-side figures are recorded as requests run. Engine-side figures (batch, KV cache, LoRA
slots) live in the engine, so a collector reports the snapshot taken just before each scrape.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from loraplex.platform.engine_state import EngineSnapshot

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ADAPTER_TIERS = ("disk", "cpu")


class _EngineCollector(Collector):
    """Engine gauges and counters from the latest snapshot, plus the platform's adapter loads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.snapshot: EngineSnapshot | None = None
        self.adapter_loads = dict.fromkeys(ADAPTER_TIERS, 0)

    def count_load(self, tier: str) -> None:
        with self._lock:
            self.adapter_loads[tier] += 1

    def collect(self):
        with self._lock:
            snapshot = self.snapshot
            loads = dict(self.adapter_loads)
        if snapshot is not None:
            loads["gpu"] = snapshot.slot_loads
        family = CounterMetricFamily(
            "loraplex_adapter_loads",
            "Adapter loads by tier: disk (from the object store), cpu (into the engine's CPU "
            "memory), gpu (into a LoRA slot)",
            labels=["tier"],
        )
        for tier, count in loads.items():
            family.add_metric([tier], count)
        yield family
        if snapshot is None:
            return
        stats = snapshot.stats
        gauges = (
            ("loraplex_num_requests_running", "Sequences in the running batch", stats.num_running),
            ("loraplex_num_requests_waiting", "Sequences waiting to run", stats.num_waiting),
            ("loraplex_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use",
             stats.kv_cache_usage),
            ("loraplex_lora_slots_used", "LoRA slots holding an adapter", snapshot.slots_used),
            ("loraplex_lora_slots_total", "LoRA slots of the engine", snapshot.max_loras),
            ("loraplex_engine_healthy", "1 while the step loop runs", int(snapshot.healthy)),
        )  # fmt: skip
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        yield SummaryMetricFamily(
            "loraplex_adapter_slot_load_seconds",
            "Time to copy adapters from CPU memory into GPU LoRA slots",
            count_value=snapshot.slot_loads,
            sum_value=snapshot.slot_load_seconds,
        )
        yield CounterMetricFamily(
            "loraplex_adapter_evictions",
            "LoRA slots taken from one adapter for another",
            value=snapshot.slot_evictions,
        )
        yield CounterMetricFamily(
            "loraplex_num_preemptions", "Sequences preempted", value=stats.num_preemptions
        )


class PlatformMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.http_requests = Counter(
            "loraplex_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "loraplex_time_to_first_token_seconds",
            "Time from admission to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "loraplex_time_per_output_token_seconds",
            "Mean time between generated tokens after the first, per request",
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "loraplex_e2e_request_latency_seconds",
            "Time from admission to the last token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "loraplex_prompt_tokens", "Prompt tokens processed", registry=registry
        )
        self.generation_tokens = Counter(
            "loraplex_generation_tokens", "Tokens generated", registry=registry
        )
        self.tenant_requests = Counter(
            "loraplex_tenant_requests",
            "Generation requests admitted, per tenant",
            ["tenant"],
            registry=registry,
        )
        self.tenant_tokens = Counter(
            "loraplex_tenant_tokens",
            "Tokens per tenant, by kind (prompt or completion)",
            ["tenant", "kind"],
            registry=registry,
        )
        self.rejections = Counter(
            "loraplex_requests_rejected",
            "Generation requests refused before running, by reason",
            ["reason"],
            registry=registry,
        )
        self.adapter_load_seconds = Histogram(
            "loraplex_adapter_load_seconds",
            "Time to bring an adapter into a tier (disk: download and verify; cpu: read)",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._engine = _EngineCollector()
        registry.register(self._engine)

    def adapter_loaded(self, tier: str, seconds: float) -> None:
        self._engine.count_load(tier)
        self.adapter_load_seconds.labels(tier).observe(seconds)

    def render(self, snapshot: EngineSnapshot) -> bytes:
        """The exposition text, with engine figures from `snapshot`."""
        with self._engine._lock:
            self._engine.snapshot = snapshot
        return generate_latest(self.registry)
