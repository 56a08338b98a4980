"""Per-tenant rate limits over a sliding window: requests per minute and tokens per minute.

Each tenant has a log of (time, amount) events for the last minute. A request is counted when it
is admitted; its tokens (prompt plus completion) when it finishes, since only then are they known.
A request is refused while the tenant's tokens in the window plus its prompt exceed the limit;
an empty window always admits, so that one request larger than the whole budget is not refused
forever. A refusal carries the number of seconds until enough of the window has expired.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Window:
    """Amounts recorded in the last `length` seconds, oldest first."""

    def __init__(self, length: float) -> None:
        self.length = length
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.length:
            self.total -= self.events.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def seconds_until_total_at_most(self, now: float, target: int) -> int:
        """Whole seconds until expiring events brings the total down to `target` or below."""
        remaining = self.total
        for at, amount in self.events:
            remaining -= amount
            if remaining <= target:
                return max(1, math.ceil(at + self.length - now))
        return max(1, math.ceil(self.length))


class TenantRateLimiter:
    def __init__(
        self, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_seconds = window_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._requests: dict[int, _Window] = {}
        self._tokens: dict[int, _Window] = {}

    def _window(self, table: dict[int, _Window], tenant_id: int, now: float) -> _Window:
        window = table.get(tenant_id)
        if window is None:
            window = table[tenant_id] = _Window(self.window_seconds)
        window.expire(now)
        return window

    def admit_request(self, tenant_id: int, limit: int | None) -> None:
        """Count one request, or raise RateLimited if the tenant made `limit` in the window."""
        if limit is None:
            return
        with self._lock:
            now = self.clock()
            window = self._window(self._requests, tenant_id, now)
            if window.total >= limit:
                retry = window.seconds_until_total_at_most(now, limit - 1)
                raise RateLimited(
                    f"rate limit reached: {limit} requests per minute; retry in {retry} s", retry
                )
            window.add(now, 1)

    def check_tokens(self, tenant_id: int, limit: int | None, incoming: int) -> None:
        """Raise RateLimited if the tenant's tokens in the window plus `incoming` exceed `limit`."""
        if limit is None:
            return
        with self._lock:
            now = self.clock()
            window = self._window(self._tokens, tenant_id, now)
            if window.total and window.total + incoming > limit:
                retry = window.seconds_until_total_at_most(now, max(limit - incoming, 0))
                raise RateLimited(
                    f"rate limit reached: {limit} tokens per minute "
                    f"({window.total} used in the last minute); retry in {retry} s",
                    retry,
                )

    def record_tokens(self, tenant_id: int, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            now = self.clock()
            self._window(self._tokens, tenant_id, now).add(now, tokens)

    def tokens_in_window(self, tenant_id: int) -> int:
        with self._lock:
            return self._window(self._tokens, tenant_id, self.clock()).total
