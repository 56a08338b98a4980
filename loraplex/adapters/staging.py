"""Bring uploaded adapter files into a private staging folder, safely and within a byte budget.

Accepted uploads: the two files (`*.json` config, `*.safetensors` weights), or one `.tar.gz` /
`.tgz` / `.zip` archive holding `adapter_config.json` and `adapter_model.safetensors` at its root
or inside one top-level folder. A client's file names are only inspected (suffix, basename), never
used to build a path: staged files always get the fixed names. Archive members that are links,
devices, absolute paths or contain `..` make the whole archive refused, as do pickle files.
"""

from __future__ import annotations

import gzip
import hashlib
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from loraplex.adapter_format.peft import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFormatError,
    is_pickle_filename,
    pickle_refusal,
)
from loraplex.adapters.errors import QuotaExceededError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MAX_ARCHIVE_MEMBERS = 1000
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UploadedFile:
    filename: str  # as the client named it; only its suffix and basename are looked at
    stream: BinaryIO


@dataclass(frozen=True)
class StagedAdapter:
    config_path: Path
    weights_path: Path
    total_bytes: int  # config plus weights
    config_sha256: str
    weights_sha256: str


class _Budget:
    """Bytes still allowed for this upload; exceeding it stops the copy at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.remaining = limit

    def take(self, size: int) -> None:
        self.remaining -= size
        if self.remaining < 0:
            raise QuotaExceededError(f"adapter upload exceeds the size limit of {self.limit} bytes")


def _copy(source: BinaryIO, destination: Path, budget: _Budget) -> str:
    digest = hashlib.sha256()
    with open(destination, "wb") as out:
        while chunk := source.read(CHUNK_BYTES):
            budget.take(len(chunk))
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def stage_upload(files: Sequence[UploadedFile], *, folder: Path, max_bytes: int) -> StagedAdapter:
    """Copy or extract the upload into `folder` (which must exist and be private to the caller)."""
    for upload in files:
        if is_pickle_filename(upload.filename):
            raise pickle_refusal(upload.filename)
    config_path, weights_path = folder / ADAPTER_CONFIG_FILE, folder / ADAPTER_WEIGHTS_FILE
    budget = _Budget(max_bytes)
    if len(files) == 1 and files[0].filename.lower().endswith(ARCHIVE_SUFFIXES):
        config_sha, weights_sha = _stage_archive(files[0], folder, budget)
    else:
        configs = [f for f in files if f.filename.lower().endswith(".json")]
        weights = [f for f in files if f.filename.lower().endswith(".safetensors")]
        if len(files) != 2 or len(configs) != 1 or len(weights) != 1:
            raise AdapterFormatError(
                f"upload {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE} as two files, or one "
                f".tar.gz or .zip archive holding them; got {[f.filename for f in files]}"
            )
        config_sha = _copy(configs[0].stream, config_path, budget)
        weights_sha = _copy(weights[0].stream, weights_path, budget)
    return StagedAdapter(
        config_path=config_path,
        weights_path=weights_path,
        total_bytes=budget.limit - budget.remaining,
        config_sha256=config_sha,
        weights_sha256=weights_sha,
    )


def _stage_archive(upload: UploadedFile, folder: Path, budget: _Budget) -> tuple[str, str]:
    archive_path = folder / "upload.archive"
    # Compressed data may be slightly larger than what it holds; the extracted bytes are budgeted.
    _copy(upload.stream, archive_path, _Budget(2 * budget.limit + CHUNK_BYTES))
    try:
        if upload.filename.lower().endswith(".zip"):
            return _extract_zip(archive_path, folder, budget)
        return _extract_tar(archive_path, folder, budget)
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise AdapterFormatError(
            f"upload archive {upload.filename!r} is unreadable: {exc}"
        ) from exc
    finally:
        archive_path.unlink(missing_ok=True)


def _member_role(name: str) -> str | None:
    """Which adapter file an archive member is (None: ignored), refusing unsafe names."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name:
        raise AdapterFormatError(f"archive member {name!r} has an unsafe path; archive refused")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise AdapterFormatError(f"archive member {name!r} escapes the archive with '..'")
    if not parts:
        return None
    if is_pickle_filename(parts[-1]):
        raise pickle_refusal(name)
    if len(parts) <= 2 and parts[-1] in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        return parts[-1]
    return None


def _pick_members(members: Iterator[tuple[str, str, object]]) -> dict[str, object]:
    """From (name, kind, handle) triples choose the two adapter files, refusing unsafe members."""
    chosen: dict[str, object] = {}
    for count, (name, kind, handle) in enumerate(members, start=1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise AdapterFormatError(f"archive has more than {MAX_ARCHIVE_MEMBERS} members")
        role = _member_role(name)
        if kind == "dir":
            continue
        if kind != "file":
            raise AdapterFormatError(f"archive member {name!r} is a {kind}; archive refused")
        if role is None:
            continue
        if role in chosen:
            raise AdapterFormatError(f"archive holds more than one {role}")
        chosen[role] = handle
    missing = [role for role in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE) if role not in chosen]
    if missing:
        raise AdapterFormatError(f"archive has no {' or '.join(missing)} at its top level")
    return chosen


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym() or member.islnk():
        return "link"
    if member.ischr() or member.isblk() or member.isfifo():
        return "device"
    return "special file"


def _extract_tar(archive_path: Path, folder: Path, budget: _Budget) -> tuple[str, str]:
    with tarfile.open(archive_path, mode="r:gz") as archive:
        chosen = _pick_members((m.name, _tar_kind(m), m) for m in archive)
        digests = []
        for role in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
            source = archive.extractfile(chosen[role])  # type: ignore[arg-type]
            if source is None:
                raise AdapterFormatError(f"archive member {role} has no data")
            with source:
                digests.append(_copy(source, folder / role, budget))
    return digests[0], digests[1]


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.flag_bits & 0x1:
        return "encrypted file"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "device"
    return "dir" if info.is_dir() else "file"


def _extract_zip(archive_path: Path, folder: Path, budget: _Budget) -> tuple[str, str]:
    with zipfile.ZipFile(archive_path) as archive:
        chosen = _pick_members((i.filename, _zip_kind(i), i) for i in archive.infolist())
        digests = []
        for role in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
            with archive.open(chosen[role]) as source:  # type: ignore[arg-type]
                digests.append(_copy(source, folder / role, budget))
    return digests[0], digests[1]
