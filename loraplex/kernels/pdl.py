"""Programmatic dependent launch (Hopper and later): a kernel launched with it may start while
the kernel before it in the stream is still finishing, so its launch and set-up (and whatever
it reads that no earlier kernel writes, such as weights) overlap the previous kernel's tail.
Such a kernel must call `wait_for_previous` before reading anything an earlier kernel wrote,
in every program and before any early return: the wait is what orders it after that kernel.

At batch 1 a decode step is a chain of ~320 short kernels, where these overlaps add up. It is
on where the GPU's config says so (`"pdl": {"default": {"enabled": true}}`); `LORAPLEX_PDL=0`
or `1` overrides the config.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from loraplex.kernels.launch_config import launch_config


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Let the next kernel launch, then wait until the previous one has finished and its writes
    are visible. Does nothing unless the kernel was launched with PDL."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@functools.cache
def _enabled(device_index: int) -> bool:
    if torch.cuda.get_device_capability(device_index) < (9, 0):
        return False
    override = os.environ.get("LORAPLEX_PDL")
    if override is not None:
        return override not in ("0", "false", "")
    return bool(launch_config("pdl", "default", torch.device("cuda", device_index))["enabled"])


def pdl_options(device: torch.device) -> dict:
    """Launch keywords for a kernel taking a `PDL` constexpr: PDL on, where enabled."""
    if device.type != "cuda":
        return {"PDL": False}
    index = device.index if device.index is not None else torch.cuda.current_device()
    if not _enabled(index):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}
