"""Overload control: a bound on the sequences admitted at once.

The engine runs up to `max_num_seqs` sequences and queues the rest. Past that queue's bound a
request is refused at once with a 503 and Retry-After, rather than waiting without limit: a
client can back off or go to another replica, and the queue never grows past what the server
can drain. Sequences are counted (a request with n=4 takes four), as the engine schedules them.
"""

from __future__ import annotations

import threading


class Overloaded(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Ticket:
    """The sequences one request holds; `release` returns them (at most once)."""

    def __init__(self, control: AdmissionControl, sequences: int) -> None:
        self._control = control
        self.sequences = sequences
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._control._release(self.sequences)


class AdmissionControl:
    def __init__(self, *, running: int, waiting: int, retry_after: int) -> None:
        self.running = running  # sequences the engine runs at once
        self.waiting = waiting  # sequences that may wait beyond those
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def capacity(self) -> int:
        return self.running + self.waiting

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def admit(self, sequences: int) -> Ticket:
        """Take `sequences` places, or raise Overloaded if the queue cannot hold them."""
        with self._lock:
            # A request larger than the whole capacity still runs when the server is idle.
            if self._in_flight and self._in_flight + sequences > self.capacity:
                raise Overloaded(
                    f"the server is overloaded ({self._in_flight} sequences in flight, "
                    f"capacity {self.capacity}); retry in {self.retry_after} s",
                    self.retry_after,
                )
            self._in_flight += sequences
        return Ticket(self, sequences)

    def _release(self, sequences: int) -> None:
        with self._lock:
            self._in_flight -= sequences
