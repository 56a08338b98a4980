"""Server-side sessions: tokens hashed, idle expiry, bounded size, one-shot messages."""

from __future__ import annotations

import pytest

from loraplex.platform.dashboard.auth import safe_next
from loraplex.platform.dashboard.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_open_get_close():
    store = SessionStore(clock=Clock())
    token, session = store.open(key_id=7, key_label="lpx_abc… (ops)")
    assert store.get(token) is session and session.key_id == 7
    assert len(session.csrf_token) >= 40 and session.csrf_token != token
    assert token not in repr(store._sessions)  # only the hash is kept
    assert store.get("not-a-token") is None and store.get(None) is None
    assert store.get("x" * 500) is None
    store.close(token)
    assert store.get(token) is None


def test_idle_sessions_expire_and_use_keeps_them_alive():
    clock = Clock()
    store = SessionStore(idle_seconds=60, clock=clock)
    token, _ = store.open(key_id=1, key_label="a")
    clock.now = 59
    assert store.get(token) is not None  # use resets the idle time
    clock.now = 118
    assert store.get(token) is not None
    clock.now = 179
    assert store.get(token) is None and len(store) == 0


def test_the_least_recently_used_session_goes_first_when_full():
    store = SessionStore(max_sessions=2, clock=Clock())
    first, _ = store.open(key_id=1, key_label="a")
    second, _ = store.open(key_id=2, key_label="b")
    store.get(first)
    store.open(key_id=3, key_label="c")
    assert store.get(first) is not None and store.get(second) is None


def test_flashes_are_shown_once():
    store = SessionStore(clock=Clock())
    _, session = store.open(key_id=1, key_label="a")
    session.flash("secret", "new key", "lpx_secret")
    assert [(f.kind, f.secret) for f in session.take_flashes()] == [("secret", "lpx_secret")]
    assert session.take_flashes() == []


def test_bad_settings_raise_value_error():
    with pytest.raises(ValueError, match="idle_seconds"):
        SessionStore(idle_seconds=0)
    with pytest.raises(ValueError, match="max_sessions"):
        SessionStore(max_sessions=0)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dashboard/tenants?q=a", "/dashboard/tenants?q=a"),
        ("/dashboard", "/dashboard"),
        ("/dashboardevil", "/dashboard"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("//evil.example/dashboard", "/dashboard"),
        ("/dashboard\\..\\x", "/dashboard"),
        (None, "/dashboard"),
        ("/v1/models", "/dashboard"),
    ],
)
def test_safe_next_stays_inside_the_dashboard(target, expected):
    assert safe_next(target) == expected
