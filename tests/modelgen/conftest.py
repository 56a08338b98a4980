from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplex.modelgen import ARCHITECTURES, make_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny preset of every architecture, written once for the whole run."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_model("tiny", root / arch, arch=arch) for arch in ARCHITECTURES}


@pytest.fixture
def transformers_warnings() -> Iterator[list[str]]:
    """Warnings transformers logs meanwhile (its logger does not propagate to caplog)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
