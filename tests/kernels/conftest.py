"""Kernel tests run the Triton kernels under the interpreter on CPU (the top-level conftest sets
TRITON_INTERPRET=1 when there is no GPU) and compiled on a GPU with `pytest -m gpu`."""

from __future__ import annotations

import os


def _fix_interpreter_scalar_index() -> None:
    """Triton 3.6's interpreter turns loop bounds into ints with `int(array)`, which NumPy 2.4
    rejects for its 1-element arrays (triton-lang/triton#9171, fixed upstream by squeezing)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_scalar_index()
