"""Every launch the kernel tests make compiles for Hopper (sm_90) with the H200 launch table and
fits an SM's shared memory, checked without a GPU (see `hopper_compile.py`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_test_launches_compile_for_hopper():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "tests.kernels.hopper_compile", "-m", "not gpu", "tests/kernels",
            f"--ignore={Path(__file__).relative_to(ROOT)}",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    report = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    compiled = re.search(r"compiled (\d+) kernel variants for sm_90", result.stdout)
    assert compiled and int(compiled.group(1)) >= 50, report
