"""The driver's side of the worker processes: start them, join the process group with them,
send them commands, notice when one dies, and make sure none outlives the engine.

A watchdog thread waits on the processes' sentinels. When a worker dies unasked it records the
error, kills the other workers and aborts an NCCL process group, so that a driver blocked in a
collective gets an error within moments instead of hanging (gloo raises as soon as its peers'
sockets close). Only the driver's own thread leaves the process group, never while a collective
of it may still run. Stopping is idempotent and also runs at garbage collection and at exit.

The process group is the default one of this process, so one tensor-parallel engine may run per
process at a time. The rendezvous goes through a file store in a private temporary folder.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import wait
from pathlib import Path

import torch

from loraplex.config import EngineConfig
from loraplex.engine.distributed import rank_device
from loraplex.engine.parallel.messages import Command, encode_header
from loraplex.engine.parallel.worker import (
    backend_for,
    cpu_threads_per_rank,
    ready_key,
    run_worker,
)

logger = logging.getLogger(__name__)

_COLLECTIVE_TIMEOUT_S = 600.0  # a rank slower than this in one collective is deemed hung
_GRACEFUL_EXIT_S = 10.0  # how long a worker may take to leave after SHUTDOWN
_DEATH_NOTICE_S = 1.0  # how long a failed collective waits to learn which worker died
_LEAVE_GROUP_S = 30.0  # how long the driver may take to leave the group with its workers
_LEAVE_FAILED_GROUP_S = 5.0  # the same after a failure (a dead rank never leaves)
_POLL_S = 0.05


class TensorParallelError(RuntimeError):
    """A worker process died or a collective failed; the engine cannot go on."""


class _GroupState:
    """Shared by the group, its watchdog and its finalizer (none of them holds the group)."""

    def __init__(self, abort_group: bool) -> None:
        self.processes: list = []  # rank i + 1 at index i
        self.pipes: list = []
        self.store_dir = tempfile.mkdtemp(prefix="loraplex-tp-")
        self.abort_group = abort_group  # NCCL: a blocked collective needs an explicit abort
        self.joined = False  # this process is in the process group
        self.threads_before: int | None = None  # the driver's CPU threads, given back on leaving
        self.lock = threading.Lock()  # guards closing and error
        self.reap_lock = threading.RLock()  # serialises killing, joining, aborting, leaving
        self.closing = False
        self.error: str | None = None

    def record(self, message: str) -> str:
        """Keep the first error only: later ones are its consequences."""
        with self.lock:
            if self.error is None:
                self.error = message
            return self.error


class WorkerGroup:
    """Worker processes for ranks 1 .. N-1 and the process group they form with the driver."""

    def __init__(self, config: EngineConfig) -> None:
        size = config.parallel.tensor_parallel_size
        if torch.distributed.is_initialized():
            raise ValueError(
                f"tensor_parallel_size={size} needs a process group of its own, but this "
                "process already has one (another tensor-parallel engine?); shut it down first"
            )
        device = rank_device(config.model.device, 0, size)
        self._state = state = _GroupState(abort_group=device.type == "cuda")
        self._finalizer = weakref.finalize(self, _shutdown, state)
        store_path = str(Path(state.store_dir) / "store")
        context = torch.multiprocessing.get_context("spawn")
        for rank in range(1, size):
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=run_worker,
                args=(config, rank, store_path, reader, _COLLECTIVE_TIMEOUT_S),
                name=f"loraplex-tp-rank{rank}",
                daemon=True,
            )
            process.start()
            reader.close()
            state.processes.append(process)
            state.pipes.append(writer)
        threading.Thread(
            target=_watch, args=(state,), name="loraplex-tp-watchdog", daemon=True
        ).start()
        try:
            self._join(store_path, device, size)
        except (ValueError, KeyboardInterrupt) as exc:
            self.failure(exc)
            raise
        except Exception as exc:
            raise self.failure(exc) from exc

    def _join(self, store_path: str, device: torch.device, size: int) -> None:
        timeout = datetime.timedelta(seconds=_COLLECTIVE_TIMEOUT_S)
        store = torch.distributed.FileStore(store_path, size)
        store.set_timeout(timeout)
        # Wait for every worker to run, failing at once if one dies while starting.
        keys = [ready_key(rank) for rank in range(1, size)]
        deadline = time.monotonic() + _COLLECTIVE_TIMEOUT_S
        while not store.check(keys):
            self.check()
            if time.monotonic() > deadline:
                raise TensorParallelError(
                    f"the tensor-parallel workers did not start within {_COLLECTIVE_TIMEOUT_S} s"
                )
            time.sleep(_POLL_S)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:  # ranks share the cores; one spinning on all of them starves the others
            self._state.threads_before = torch.get_num_threads()
            torch.set_num_threads(cpu_threads_per_rank(size))
        with self._state.reap_lock:
            torch.distributed.init_process_group(
                backend_for(device),
                store=store,
                rank=0,
                world_size=size,
                timeout=timeout,
                device_id=device if device.type == "cuda" else None,
            )
            self._state.joined = True

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._state.processes]

    def check(self) -> None:
        """Raise TensorParallelError if a worker has died (the workers are stopped by then)."""
        if self._state.error is not None:
            raise TensorParallelError(self._state.error)

    def send(self, header: list[int]) -> None:
        self.check()
        message = encode_header(header)
        try:
            for pipe in self._state.pipes:
                pipe.send_bytes(message)
        except OSError as exc:
            raise self.failure(exc) from exc

    def failure(self, exc: BaseException) -> TensorParallelError:
        """Stop everything after a failed command (workers may be stuck mid-collective); the
        error names the dead worker if there is one, else `exc`."""
        dead = _dead_worker(self._state, timeout=_DEATH_NOTICE_S)
        message = self._state.record(dead or f"tensor-parallel step failed: {exc!r}")
        _kill_workers(self._state)
        _leave_group(self._state)
        return TensorParallelError(message)

    def stop(self) -> None:
        """Ask every worker to leave, kill any that does not, leave the group; idempotent."""
        self._finalizer()


def _dead_worker(state: _GroupState, timeout: float) -> str | None:
    with state.reap_lock:
        ready = set(wait([p.sentinel for p in state.processes], timeout=timeout))
        for rank, process in enumerate(state.processes, start=1):
            if process.sentinel in ready:
                process.join()
                return (
                    f"tensor-parallel worker rank {rank} (pid {process.pid}) exited with "
                    f"code {process.exitcode}"
                )
    return None


def _watch(state: _GroupState) -> None:
    wait([p.sentinel for p in state.processes])  # returns when the first one exits
    with state.lock:
        if state.closing:
            return
    message = state.record(_dead_worker(state, timeout=0) or "a tensor-parallel worker exited")
    logger.error("%s; stopping the engine", message)
    _kill_workers(state)
    with state.reap_lock:
        if state.abort_group and state.joined:
            try:
                torch.distributed.distributed_c10d._abort_process_group()
            except Exception:  # noqa: BLE001 - best effort: the driver fails either way
                logger.exception("aborting the process group failed")


def _kill_workers(state: _GroupState) -> None:
    _mark_closing(state)
    _reap(state, grace_s=0.0)


def _mark_closing(state: _GroupState) -> bool:
    """True for the first caller only."""
    with state.lock:
        first = not state.closing
        state.closing = True
    return first


def _send_shutdown(state: _GroupState) -> None:
    shutdown = encode_header([Command.SHUTDOWN])
    with state.reap_lock:
        for pipe in state.pipes:
            with contextlib.suppress(OSError):  # already gone
                pipe.send_bytes(shutdown)


def _reap(state: _GroupState, grace_s: float) -> None:
    """Join every worker, killing those still running after `grace_s`."""
    with state.reap_lock:
        for process in state.processes:
            process.join(timeout=grace_s)
        for process in state.processes:
            if process.is_alive():
                process.kill()
            process.join()
        for pipe in state.pipes:
            pipe.close()


def _leave_group(state: _GroupState, timeout_s: float = _LEAVE_FAILED_GROUP_S) -> None:
    """Leave the process group, giving up after `timeout_s`: NCCL's destroy waits for every
    rank to destroy too, so it never returns once a rank is gone. The engine is stopping
    either way; a group left behind only keeps a later tensor-parallel engine in this process
    from starting (it says so)."""
    with state.reap_lock:
        if state.joined:
            state.joined = False
            leaving = threading.Thread(target=_destroy_group, name="loraplex-tp-leave", daemon=True)
            leaving.start()
            leaving.join(timeout_s)
            if leaving.is_alive():
                logger.error(
                    "leaving the tensor-parallel process group took more than %.0f s "
                    "(a rank is gone?); left it behind",
                    timeout_s,
                )
        if state.threads_before is not None:
            torch.set_num_threads(state.threads_before)
            state.threads_before = None
        shutil.rmtree(state.store_dir, ignore_errors=True)


def _destroy_group() -> None:
    try:
        torch.distributed.destroy_process_group()
    except Exception:  # noqa: BLE001 - an aborted group may refuse; it is gone anyway
        logger.exception("leaving the process group failed")


def _shutdown(state: _GroupState) -> None:
    """The normal stop. Every rank leaves the group at the same time (a worker leaves as soon
    as it reads SHUTDOWN, and with NCCL that waits for the driver to leave too), then the
    workers exit."""
    if _mark_closing(state):
        _send_shutdown(state)
    _leave_group(state, timeout_s=_LEAVE_GROUP_S)
    _reap(state, grace_s=_GRACEFUL_EXIT_S)
