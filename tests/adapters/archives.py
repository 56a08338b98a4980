"""Build .tar.gz and .zip uploads in memory, including hostile members."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile


def tar_gz(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """`members`: (name, data, tar type); data None for links and devices."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_files(files: dict[str, bytes]) -> bytes:
    return tar_gz([(name, data, tarfile.REGTYPE) for name, data in files.items()])


def zip_files(files: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = stat.S_IFLNK | 0o777 if name in symlinks else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()
