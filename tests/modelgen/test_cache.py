"""`cached_model`: built once, keyed by code version, safe against concurrent builders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraplex.modelgen import cache, cached_model, writer


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(root))
    return root


def test_builds_once_and_then_reuses_the_folder(cache_dir, monkeypatch):
    folder = cached_model("tiny", "mistral", seed=2)
    assert folder.parent == cache_dir
    assert folder.name == f"tiny-mistral-seed2-{cache.code_fingerprint()}"
    assert (folder / "model.safetensors").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached model was built again")

    monkeypatch.setattr(writer, "make_model", no_rebuild)
    assert cached_model("tiny", "mistral", seed=2) == folder
    assert [p.name for p in cache_dir.iterdir()] == [folder.name]


def test_a_builder_that_loses_the_race_uses_the_winners_copy(cache_dir, monkeypatch):
    real_make_model = writer.make_model
    final = cache_dir / f"tiny-llama-seed0-{cache.code_fingerprint()}"

    def build_while_another_process_finishes_first(preset, out_dir, **kwargs):
        built = real_make_model(preset, out_dir, **kwargs)
        shutil.copytree(built, final)
        (final / "winner").write_text("")
        return built

    monkeypatch.setattr(writer, "make_model", build_while_another_process_finishes_first)
    assert cached_model("tiny", "llama") == final
    assert (final / "winner").exists()
    assert [p.name for p in cache_dir.iterdir()] == [final.name]


def test_a_failed_build_leaves_nothing_behind(cache_dir, monkeypatch):
    def failing_build(preset, out_dir, **kwargs):
        (Path(out_dir) / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "make_model", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        cached_model("tiny", "qwen2")
    assert list(cache_dir.iterdir()) == []


def test_fingerprint_depends_on_the_code(monkeypatch):
    fingerprint = cache.code_fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    cache.code_fingerprint.cache_clear()
    monkeypatch.setattr(cache, "_FINGERPRINTED_LIBRARIES", ("torch",))
    assert cache.code_fingerprint() != fingerprint
    cache.code_fingerprint.cache_clear()


def test_unwritable_default_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV_VAR, raising=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(cache, "_REPO_CACHE", blocker / "models")
    monkeypatch.setattr(cache.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cache.cache_root() == tmp_path / "tmp" / "loraplex-models"
    assert cache.cache_root().is_dir()


def test_default_root_in_the_repo_is_ignored_by_git(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV_VAR, raising=False)
    monkeypatch.setattr(cache, "_REPO_CACHE", tmp_path / ".cache" / "models")
    assert cache.cache_root() == tmp_path / ".cache" / "models"
    assert (tmp_path / ".cache" / ".gitignore").read_text() == "*\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("huge", "llama", 0), "unknown preset"),
        (("tiny", "../../etc", 0), "unknown arch"),
        (("tiny", "llama", -1), "seed must be"),
    ],
)
def test_bad_arguments_raise_value_error(cache_dir, args, message):
    with pytest.raises(ValueError, match=message):
        cached_model(*args)
