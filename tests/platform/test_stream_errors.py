"""A stream that fails after its first events: the client gets the events so far, one error
event in OpenAI's shape (the HTTP status is already sent), then [DONE] -- never a cut-off
body. A bug reads as a generic server error, without its details."""

from __future__ import annotations

import json

import pytest

from loraplex.engine.async_engine import EngineDeadError
from loraplex.platform.streaming import DONE_EVENT, event_stream


class FailingRun:
    request_id = "cmpl-test"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def outputs(self):
        yield 0, "first"
        yield 0, "second"
        raise self.error


def render(index: int, output: str) -> list[dict]:
    return [{"index": index, "text": output}]


async def collect(error: Exception) -> list[str]:
    final_called = []
    events = [
        event
        async for event in event_stream(
            FailingRun(error), render, lambda: final_called.append(True) or [{"usage": {}}]
        )
    ]
    assert not final_called  # no usage block after a failure
    return events


def payloads(events: list[str]) -> list[dict]:
    assert events[-1] == DONE_EVENT
    return [json.loads(event.removeprefix("data: ")) for event in events[:-1]]


@pytest.mark.asyncio
async def test_engine_death_mid_stream_becomes_an_error_event_then_done():
    events = payloads(await collect(EngineDeadError("the engine stopped: worker 1 died")))
    assert events[:2] == [{"index": 0, "text": "first"}, {"index": 0, "text": "second"}]
    error = events[2]["error"]
    assert "worker 1 died" in error["message"] and error["code"] == "engine_dead"
    assert len(events) == 3


@pytest.mark.asyncio
async def test_a_bug_mid_stream_hides_its_details():
    events = payloads(await collect(RuntimeError("secret internal state")))
    assert events[2] == {"error": {"message": "internal server error", "type": "server_error"}}
    assert "secret" not in json.dumps(events)
