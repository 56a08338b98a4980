from __future__ import annotations

import hashlib
import io

import pytest

from loraplex.adapter_format.peft import AdapterFormatError
from loraplex.adapters.errors import QuotaExceededError
from loraplex.adapters.staging import UploadedFile, stage_upload
from tests.adapters.archives import tar_files, zip_files

CONFIG, WEIGHTS = b'{"peft_type": "LORA"}', b"\x08" + b"\0" * 63


def _stage(tmp_path, files, max_bytes=1_000_000):
    folder = tmp_path / "staging"
    folder.mkdir(exist_ok=True)
    return stage_upload(files, folder=folder, max_bytes=max_bytes), folder


def _check_staged(staged, folder):
    assert staged.config_path == folder / "adapter_config.json"
    assert staged.weights_path == folder / "adapter_model.safetensors"
    assert staged.config_path.read_bytes() == CONFIG
    assert staged.weights_path.read_bytes() == WEIGHTS
    assert staged.config_sha256 == hashlib.sha256(CONFIG).hexdigest()
    assert staged.weights_sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert staged.total_bytes == len(CONFIG) + len(WEIGHTS)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_two_files_named_freely(tmp_path):
    files = [
        UploadedFile("../../etc/cron.d/my.json", io.BytesIO(CONFIG)),
        UploadedFile("C:\\x\\weights.safetensors", io.BytesIO(WEIGHTS)),
    ]
    staged, folder = _stage(tmp_path, files)
    _check_staged(staged, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging"]


@pytest.mark.parametrize("name", ["adapter.tar.gz", "ADAPTER.TGZ"])
def test_tar_gz_with_top_folder_and_extras(tmp_path, name):
    archive = tar_files(
        {
            "my-adapter/adapter_config.json": CONFIG,
            "my-adapter/adapter_model.safetensors": WEIGHTS,
            "my-adapter/README.md": b"# notes",
            "my-adapter/deep/adapter_config.json": b"ignored: too deep",
        }
    )
    staged, folder = _stage(tmp_path, [UploadedFile(name, io.BytesIO(archive))])
    _check_staged(staged, folder)


def test_zip_at_root(tmp_path):
    archive = zip_files(
        {"./adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS, "dir/": b""}
    )
    staged, folder = _stage(tmp_path, [UploadedFile("a.zip", io.BytesIO(archive))])
    _check_staged(staged, folder)


def test_budget_counts_both_files(tmp_path):
    files = [
        UploadedFile("c.json", io.BytesIO(CONFIG)),
        UploadedFile("w.safetensors", io.BytesIO(WEIGHTS)),
    ]
    with pytest.raises(QuotaExceededError, match=f"size limit of {len(CONFIG) + 10} bytes"):
        _stage(tmp_path, files, max_bytes=len(CONFIG) + 10)


@pytest.mark.parametrize(
    "names",
    [["a.json"], ["a.json", "b.json"], ["a.json", "b.safetensors", "c.txt"], ["a.tar", "b.json"]],
)
def test_wrong_file_sets_are_refused(tmp_path, names):
    files = [UploadedFile(name, io.BytesIO(b"{}")) for name in names]
    with pytest.raises(AdapterFormatError, match="two files"):
        _stage(tmp_path, files)


def test_duplicate_archive_members_are_refused(tmp_path):
    archive = tar_files(
        {
            "a/adapter_config.json": CONFIG,
            "b/adapter_config.json": CONFIG,
            "a/adapter_model.safetensors": WEIGHTS,
        }
    )
    with pytest.raises(AdapterFormatError, match="more than one adapter_config.json"):
        _stage(tmp_path, [UploadedFile("x.tar.gz", io.BytesIO(archive))])
