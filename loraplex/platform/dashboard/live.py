"""The recent past of the engine for the live charts: a ring buffer of per-second samples.

Each sample copies counters that already exist, the service's Prometheus counters (tokens and
generation requests) and the engine's step-loop stats (running, waiting, KV usage); rates are the
differences between neighbouring samples. Nothing is counted twice: the buffer only remembers
what the metrics said a moment ago. Token counters advance when a request finishes, so a long
request shows as one step at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from loraplex.platform.state import AppState

logger = logging.getLogger(__name__)

SAMPLE_SECONDS = 1.0
HISTORY_SECONDS = 900  # kept in memory: 15 minutes of samples
CHART_WINDOW_SECONDS = 300  # shown on the charts


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    tokens: float  # prompt and completion tokens of finished requests, since start
    requests: float  # generation requests admitted, since start
    running: int
    waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class RatePoint:
    age_seconds: float  # how long before the newest sample
    tokens_per_second: float
    requests_per_second: float
    running: int
    waiting: int
    kv_cache_usage: float


@dataclass(frozen=True)
class Window:
    """The samples of the last `seconds`, as rates."""

    seconds: float
    points: list[RatePoint]  # oldest first
    tokens: float  # tokens counted in the window
    requests: float  # requests admitted in the window


def counter_total(counter: Counter) -> float:
    """The sum of a counter over all its labels."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def read_sample(state: AppState, clock: Callable[[], float] = time.monotonic) -> Sample:
    metrics = state.metrics
    stats = state.engine.stats()
    return Sample(
        at=clock(),
        tokens=counter_total(metrics.prompt_tokens) + counter_total(metrics.generation_tokens),
        requests=counter_total(metrics.tenant_requests),
        running=stats.num_running,
        waiting=stats.num_waiting,
        kv_cache_usage=stats.kv_cache_usage,
    )


class LiveHistory:
    def __init__(self, *, capacity: int = int(HISTORY_SECONDS / SAMPLE_SECONDS)) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 samples, got {capacity}")
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def record(self, sample: Sample) -> None:
        with self._lock:
            if self._samples and sample.at <= self._samples[-1].at:
                raise ValueError("samples must be recorded in increasing time order")
            self._samples.append(sample)

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)

    def window(self, seconds: float = CHART_WINDOW_SECONDS) -> Window:
        """Rates between neighbouring samples of the last `seconds`, ending at the newest."""
        if seconds <= 0:
            raise ValueError(f"the window must be positive, got {seconds}")
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return Window(seconds, [], 0.0, 0.0)
        newest = samples[-1].at
        inside = [s for s in samples if newest - s.at <= seconds]
        # The sample just before the window is the baseline of its first rate.
        start = max(0, len(samples) - len(inside) - 1)
        considered = samples[start:]
        points = []
        for before, after in zip(considered, considered[1:], strict=False):
            elapsed = after.at - before.at
            points.append(
                RatePoint(
                    age_seconds=newest - after.at,
                    tokens_per_second=max(0.0, after.tokens - before.tokens) / elapsed,
                    requests_per_second=max(0.0, after.requests - before.requests) / elapsed,
                    running=after.running,
                    waiting=after.waiting,
                    kv_cache_usage=after.kv_cache_usage,
                )
            )
        first = considered[0]
        return Window(
            seconds=seconds,
            points=points,
            tokens=max(0.0, samples[-1].tokens - first.tokens),
            requests=max(0.0, samples[-1].requests - first.requests),
        )


async def sample_periodically(
    history: LiveHistory, read: Callable[[], Sample], interval: float = SAMPLE_SECONDS
) -> None:
    """Record `read()` every `interval` seconds until cancelled."""
    while True:
        try:
            history.record(read())
        except Exception:  # a failed read loses one point of a chart, never the sampler
            logger.exception("could not sample the engine for the dashboard")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def sampling(
    history: LiveHistory, read: Callable[[], Sample], interval: float = SAMPLE_SECONDS
) -> AsyncIterator[None]:
    """Sample in the background for the duration of the block."""
    task = asyncio.create_task(sample_periodically(history, read, interval), name="dashboard-live")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
