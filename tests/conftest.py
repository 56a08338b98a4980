import os

import pytest
import torch

# Triton decides at decoration time whether to interpret, so this must precede any kernel import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# float32 parity tests need exact float32 dots in the Triton kernels, not TF32.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

# Engine tests run on this device: cpu here and in CI, cuda on the GPU machine.
TEST_DEVICE = os.environ.get("LORAPLEX_TEST_DEVICE", "cpu")


def pytest_runtest_setup(item):
    """GPU tests fail, rather than skip, when selected on a machine without a GPU."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.fail("this test needs a CUDA GPU (run it on the GPU machine with -m gpu)")


@pytest.fixture(scope="session")
def test_device() -> str:
    return TEST_DEVICE


@pytest.fixture(scope="session")
def tiny_model_dirs():
    """Tiny random checkpoints of each supported architecture, built once per cache key."""
    from loraplex.modelgen import cached_model

    return {arch: str(cached_model("tiny", arch)) for arch in ("llama", "mistral", "qwen2")}


@pytest.fixture(autouse=True)
def _release_gpu_memory():
    """Each engine sizes its KV cache from the GPU memory left free, so one test's engines
    (often in reference cycles) must be gone before the next test builds its own."""
    yield
    if torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
