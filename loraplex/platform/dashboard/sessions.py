"""Dashboard sign-in sessions, held server-side in the process's memory.

The browser holds only a random token (in an HttpOnly, SameSite=Strict cookie); the store keeps
its SHA-256, so the memory of the server holds no cookie that could be replayed. Each session
carries its own CSRF token for the forms it renders and a queue of one-shot messages shown on
the next page (such as a key's plaintext, shown once). Signing out, idling past the timeout or a
restart of the server ends a session; so does revoking the admin key it was opened with, which
is checked on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

TOKEN_BYTES = 32
DEFAULT_IDLE_SECONDS = 8 * 3600
DEFAULT_MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Flash:
    """A message for the next page the session renders."""

    kind: str  # "success", "error" or "secret" (a new key, shown once with a copy button)
    text: str
    secret: str | None = None  # the value to show once, for kind "secret"


@dataclass
class DashboardSession:
    key_id: int  # the admin key that signed in
    key_label: str  # its display prefix and name, to show who is signed in
    csrf_token: str
    last_seen: float
    flashes: list[Flash] = field(default_factory=list)

    def flash(self, kind: str, text: str, secret: str | None = None) -> None:
        self.flashes.append(Flash(kind, text, secret))

    def take_flashes(self) -> list[Flash]:
        taken, self.flashes = self.flashes, []
        return taken


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionStore:
    """Sessions by token hash; least recently used ones go first once `max_sessions` is reached."""

    def __init__(
        self,
        *,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, DashboardSession] = OrderedDict()

    def open(self, *, key_id: int, key_label: str) -> tuple[str, DashboardSession]:
        """A new session; returns the token for the cookie (never stored) and the session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session = DashboardSession(
            key_id=key_id,
            key_label=key_label,
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            last_seen=self._clock(),
        )
        with self._lock:
            self._sessions[_digest(token)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> DashboardSession | None:
        """The live session of `token`, its idle time reset; None if unknown or expired."""
        if not token or len(token) > 128:
            return None
        digest = _digest(token)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(digest)
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[digest]
                return None
            session.last_seen = now
            self._sessions.move_to_end(digest)
            return session

    def close(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._sessions.pop(_digest(token), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
