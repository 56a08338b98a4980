"""A tensor-parallel worker process: one rank's ModelRunner, driven by the driver's commands.

The worker blocks on its command pipe between steps (no collective waits while the engine is
idle, so no timeout can fire then), and leaves as soon as the driver is gone: the pipe reports
end-of-file, and a watcher thread exits the process even while it is stuck in a collective.
"""

from __future__ import annotations

import datetime
import os
import threading
from multiprocessing import parent_process
from multiprocessing.connection import Connection

import torch

from loraplex.config import EngineConfig
from loraplex.engine.distributed import rank_device
from loraplex.engine.layers.lora import write_lora_slot
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.parallel.messages import (
    Command,
    decode_header,
    lora_payload_size,
    step_payload_size,
    unpack_lora_slot,
    unpack_step,
)


def ready_key(rank: int) -> str:
    """The store key a worker sets once it runs, before it joins the process group."""
    return f"loraplex/worker-ready/{rank}"


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def cpu_threads_per_rank(size: int) -> int:
    return max(1, (os.cpu_count() or 1) // size)


def _exit_with_parent() -> None:
    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="loraplex-parent-watch", daemon=True).start()


def run_worker(
    config: EngineConfig,
    rank: int,
    store_path: str,
    commands: Connection,
    timeout_s: float,
) -> None:
    """Entry point of worker `rank` (1 .. N-1); the driver is rank 0 and made the store file."""
    _exit_with_parent()
    size = config.parallel.tensor_parallel_size
    device = rank_device(config.model.device, rank, size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # ranks share the CPU cores
        torch.set_num_threads(cpu_threads_per_rank(size))
    timeout = datetime.timedelta(seconds=timeout_s)
    store = torch.distributed.FileStore(store_path, size)
    store.set_timeout(timeout)
    store.set(ready_key(rank), "1")
    torch.distributed.init_process_group(
        backend_for(device),
        store=store,
        rank=rank,
        world_size=size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        runner = ModelRunner(config, rank=rank)
        _serve(runner, commands)
    finally:
        torch.distributed.destroy_process_group()


def _serve(runner: ModelRunner, commands: Connection) -> None:
    max_loras = runner.config.lora.max_loras if runner.config.lora is not None else 1
    with torch.inference_mode():
        while True:
            try:
                header = decode_header(commands.recv_bytes())
            except EOFError:  # the driver went away without a word
                return
            command = header[0]
            if command == Command.EXECUTE:
                payload = _receive(step_payload_size(header), torch.int64, runner.device)
                runner.run(unpack_step(header, payload, max_loras))
            elif command == Command.WRITE_LORA_SLOT:
                payload = _receive(lora_payload_size(header), torch.uint8, runner.device)
                slot, weights = unpack_lora_slot(header, payload, runner.dtype)
                write_lora_slot(runner.lora_layers, slot, weights)
            elif command == Command.SHUTDOWN:
                return
            else:
                raise RuntimeError(f"unknown command {command} from the driver")


def _receive(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    payload = torch.empty(numel, dtype=dtype, device=device)
    if numel:
        torch.distributed.broadcast(payload, src=0)
    return payload
