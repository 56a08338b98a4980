"""The live history: rates from the differences of per-second samples of existing counters."""

from __future__ import annotations

import asyncio

import pytest

from loraplex.platform.dashboard.live import LiveHistory, Sample, sampling


def _sample(at: float, tokens: float, requests: float, running: int = 0) -> Sample:
    return Sample(at, tokens, requests, running, 0, 0.25)


def test_rates_are_differences_over_elapsed_time():
    history = LiveHistory(capacity=10)
    for at, tokens, requests in ((0, 0, 0), (1, 10, 1), (3, 30, 1), (4, 30, 4)):
        history.record(_sample(at, tokens, requests, running=at))
    window = history.window(10)
    assert [p.age_seconds for p in window.points] == [3, 1, 0]
    assert [p.tokens_per_second for p in window.points] == [10, 10, 0]
    assert [p.requests_per_second for p in window.points] == [1, 0, 3]
    assert [p.running for p in window.points] == [1, 3, 4]
    assert (window.tokens, window.requests) == (30, 4)


def test_the_window_keeps_its_baseline_and_the_buffer_its_capacity():
    history = LiveHistory(capacity=5)
    for second in range(8):
        history.record(_sample(second, 10 * second, second))
    assert len(history) == 5  # samples 3..7
    window = history.window(2)
    assert [p.age_seconds for p in window.points] == [2, 1, 0]  # from the sample before
    assert window.tokens == 30 and window.requests == 3


def test_counter_resets_never_give_negative_rates():
    history = LiveHistory(capacity=4)
    history.record(_sample(0, 100, 10))
    history.record(_sample(1, 5, 1))
    point = history.window(5).points[0]
    assert (point.tokens_per_second, point.requests_per_second) == (0, 0)


def test_bad_use_raises_value_error():
    history = LiveHistory(capacity=3)
    history.record(_sample(5, 0, 0))
    with pytest.raises(ValueError, match="increasing time"):
        history.record(_sample(5, 0, 0))
    with pytest.raises(ValueError, match="positive"):
        history.window(0)
    with pytest.raises(ValueError, match="at least 2"):
        LiveHistory(capacity=1)
    assert LiveHistory().window().points == []


def test_sampling_records_in_the_background_and_survives_a_failed_read():
    history = LiveHistory(capacity=100)
    calls = []

    def read() -> Sample:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("a metrics read failed")
        return _sample(float(len(calls)), 0, 0)

    async def run() -> None:
        async with sampling(history, read, interval=0.01):
            while len(calls) < 5:
                await asyncio.sleep(0.01)

    asyncio.run(run())
    assert len(history) == len(calls) - 1 >= 4
