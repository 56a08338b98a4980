"""Engine options reach the engine from the environment, as operators set them."""

from __future__ import annotations

from loraplex.platform.settings import Settings
from loraplex.platform.state import engine_args


def test_async_scheduling_is_on_unless_the_environment_turns_it_off(tmp_path, monkeypatch):
    default = engine_args(Settings(data_dir=tmp_path), "/models/x")
    assert default.async_scheduling is True
    monkeypatch.setenv("LORAPLEX_ASYNC_SCHEDULING", "false")
    assert engine_args(Settings(data_dir=tmp_path), "/models/x").async_scheduling is False
