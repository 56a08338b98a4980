"""Random-weight Hugging Face checkpoints of real architectures, for tests and benchmarks.

`make_model` writes a model folder; `cached_model` returns a shared, built-once copy. They are
imported on first use so that the command line can list presets without loading torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from loraplex.modelgen.presets import ARCHITECTURES, DTYPES, PRESETS, Preset

if TYPE_CHECKING:
    from loraplex.modelgen.cache import cached_model
    from loraplex.modelgen.writer import make_model

__all__ = ["ARCHITECTURES", "DTYPES", "PRESETS", "Preset", "cached_model", "make_model"]

_LAZY_ATTRIBUTES = {
    "make_model": "loraplex.modelgen.writer",
    "cached_model": "loraplex.modelgen.cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
