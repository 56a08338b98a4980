"""A shared on-disk cache of generated models, so test suites build each model once.

Folders are keyed by preset, arch, seed and a fingerprint of this package's code and of the
libraries whose output ends up in the files, so a change to any of them builds afresh. A model
is built in a private temporary folder and renamed into place: a folder under its final name is
always complete, and two processes building the same model at once both end up using one copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import cache
from importlib import metadata
from pathlib import Path

from loraplex.modelgen.presets import resolve_spec

CACHE_ENV_VAR = "LORAPLEX_MODEL_CACHE"
_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_CACHE = _PACKAGE_DIR.parents[1] / ".cache" / "models"
_FINGERPRINTED_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors")


@cache
def code_fingerprint() -> str:
    """A short hash of the generator's source files and the relevant library versions."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for library in _FINGERPRINTED_LIBRARIES:
        digest.update(f"{library}=={metadata.version(library)}\0".encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """`$LORAPLEX_MODEL_CACHE`, else `<repo>/.cache/models`, else a folder in the temp dir."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        root = Path(configured)
        root.mkdir(parents=True, exist_ok=True)
        return root
    if _is_writable(_REPO_CACHE):
        # Keeps the cache out of version control and out of copies of the working tree.
        ignore_file = _REPO_CACHE.parent / ".gitignore"
        if not ignore_file.exists():
            ignore_file.write_text("*\n", encoding="utf-8")
        return _REPO_CACHE
    root = Path(tempfile.gettempdir()) / "loraplex-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _is_writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def cached_model(preset: str, arch: str = "llama", seed: int = 0) -> Path:
    """The folder of this model in the cache, built first if it is not there yet."""
    resolve_spec(preset, arch)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = cache_root()
    final = root / f"{preset}-{arch}-seed{seed}-{code_fingerprint()}"
    if final.is_dir():
        return final

    from loraplex.modelgen.writer import make_model

    staging = Path(tempfile.mkdtemp(prefix=f".building-{final.name}-", dir=root))
    try:
        make_model(preset, staging, arch=arch, seed=seed)
        os.rename(staging, final)
    except OSError:
        # Another process renamed its copy into place first; theirs is as good as ours.
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
