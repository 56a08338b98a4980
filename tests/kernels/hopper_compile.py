"""pytest plugin: compile every Triton launch of the kernel tests for Hopper (sm_90), with the
H200 launch table and programmatic dependent launch on, on a machine without a GPU.

Nothing runs: each launch is compiled (to a cubin, by the ptxas bundled with Triton) and its
shared memory checked against an H100/H200 SM's 227 KiB. A test passes unless one of its launches
fails to compile or does not fit, whatever it would have asserted about results. This catches
what the CPU interpreter accepts but the compiler does not (for instance a runtime branch
returning values of two types) before any GPU time is spent.

    TRITON_INTERPRET=0 pytest -p tests.kernels.hopper_compile tests/kernels -m "not gpu"
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler.errors import CompilationError
from triton.runtime import driver
from triton.runtime.errors import PTXASError
from triton.runtime.jit import JITFunction

HOPPER = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_PER_SM = 232448  # bytes an H100 / H200 block may use
COMPILED: set[tuple[str, int, int]] = set()


class SharedMemoryOverflow(RuntimeError):
    pass


class _CompileOnlyDriver:
    """What `JITFunction.run` asks of the active driver, for a GPU that is not there."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return HOPPER

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _compile_only(run):
    def compile_kernel(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        shared = kernel.metadata.shared
        COMPILED.add((self.fn.__name__, shared, kernel.metadata.num_warps))
        if shared > SHARED_MEMORY_PER_SM:
            raise SharedMemoryOverflow(
                f"{self.fn.__name__} needs {shared} bytes of shared memory, an SM has "
                f"{SHARED_MEMORY_PER_SM}"
            )
        return kernel

    return compile_kernel


def pytest_configure(config) -> None:
    driver.set_active(_CompileOnlyDriver())
    JITFunction.run = _compile_only(JITFunction.run)
    import loraplex.kernels
    from loraplex.kernels import launch_config

    launch_config.device_table_name = lambda device: "NVIDIA_H200"
    on = {"PDL": True, "launch_pdl": True}
    for info in pkgutil.iter_modules(loraplex.kernels.__path__):
        module = importlib.import_module(f"loraplex.kernels.{info.name}")
        if hasattr(module, "pdl_options"):
            module.pdl_options = lambda device, on=on: dict(on)


def _compile_failure(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, CompilationError | PTXASError | SharedMemoryOverflow):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except BaseException as exc:
        if _compile_failure(exc):
            raise
        return None  # compiled; nothing ran, so what the test checks of results is moot


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(f"compiled {len(COMPILED)} kernel variants for sm_90")
