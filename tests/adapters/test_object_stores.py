"""One suite for both object stores (local folder, S3 through moto), plus what is specific."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest

from loraplex.adapters.local_store import LocalObjectStore
from loraplex.adapters.object_store import (
    ObjectIntegrityError,
    ObjectNotFoundError,
    open_object_store,
)
from loraplex.adapters.s3_store import S3ObjectStore
from tests.adapters.support import make_s3_store


def test_put_get_bytes_and_file(store, tmp_path):
    store.put("tenants/1/a.json", b'{"x": 1}')
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(4096))
    store.put("tenants/1/b.bin", source)
    assert store.get_bytes("tenants/1/a.json") == b'{"x": 1}'
    destination = tmp_path / "out" / "b.bin"
    destination.parent.mkdir()
    store.get_to_file("tenants/1/b.bin", destination)
    assert destination.read_bytes() == source.read_bytes()
    assert store.exists("tenants/1/a.json")
    assert not store.exists("tenants/1/missing")


def test_put_replaces_whole_object(store):
    store.put("k/v.txt", b"first version, longer")
    store.put("k/v.txt", b"second")
    assert store.get_bytes("k/v.txt") == b"second"


def test_missing_objects(store, tmp_path):
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("nope/x")
    with pytest.raises(ObjectNotFoundError):
        store.get_to_file("nope/x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    store.delete("nope/x")  # deleting what is absent is not an error


def test_list_by_prefix(store):
    before = datetime.now(UTC) - timedelta(minutes=1)
    for key in ["tenants/1/v1/a", "tenants/1/v10/a", "tenants/1/v2/a", "tenants/2/v1/a", "other/x"]:
        store.put(key, key.encode())
    listed = list(store.list("tenants/1/"))
    assert [info.key for info in listed] == ["tenants/1/v1/a", "tenants/1/v10/a", "tenants/1/v2/a"]
    assert [info.key for info in store.list("tenants/1/v1")] == [
        "tenants/1/v1/a",
        "tenants/1/v10/a",
    ]
    assert listed[0].size == len(b"tenants/1/v1/a")
    assert all(
        before <= info.last_modified <= datetime.now(UTC) + timedelta(minutes=1) for info in listed
    )
    assert len(list(store.list())) == 5
    assert list(store.list("absent/")) == []


def test_delete_and_delete_prefix(store):
    for key in ["p/v1/a", "p/v1/b", "p/v2/a"]:
        store.put(key, b"x")
    store.delete("p/v2/a")
    assert not store.exists("p/v2/a")
    assert store.delete_prefix("p/v1/") == ["p/v1/a", "p/v1/b"]
    assert list(store.list("p/")) == []
    with pytest.raises(ValueError, match="end with '/'"):
        store.delete_prefix("p/v1")


@pytest.mark.parametrize(
    "key", ["", "/abs", "../up", "a/../../b", "a//b", "a/./b", ".hidden", "a\\b", "a/b/", "é"]
)
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(ValueError, match="object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="object key"):
        store.get_bytes(key)


def test_local_store_cannot_escape_its_root(tmp_path):
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        store.put("link/x", b"escape")
    assert list(outside.iterdir()) == []


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path / "root")
    store.put("k/obj", b"old")

    def fail_midway(*_args):
        raise OSError("disk full")

    monkeypatch.setattr("loraplex.adapters.local_store.os.fsync", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        store.put("k/obj", b"new bytes that never land")
    monkeypatch.undo()
    assert store.get_bytes("k/obj") == b"old"
    assert sorted(p.name for p in (tmp_path / "root" / "k").iterdir()) == ["obj"]


def test_local_delete_prunes_empty_folders(tmp_path):
    store = LocalObjectStore(tmp_path / "root")
    store.put("tenants/1/adapters/2/v1/a", b"x")
    store.delete("tenants/1/adapters/2/v1/a")
    assert list((tmp_path / "root").iterdir()) == []


def test_s3_records_our_sha256(moto_endpoint):
    store = make_s3_store(moto_endpoint)
    data = b"adapter bytes"
    store.put("k/obj", data)
    assert (
        store.stored_checksum("k/obj") == base64.b64encode(hashlib.sha256(data).digest()).decode()
    )


def test_s3_multipart_upload(moto_endpoint, tmp_path):
    part = 5 * 1024 * 1024
    store = make_s3_store(moto_endpoint, multipart_threshold=part, multipart_chunk_size=part)
    data = os.urandom(2 * part + 1234)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    store.put("big/from-file", source)
    store.put("big/from-bytes", data)
    for key in ("big/from-file", "big/from-bytes"):
        assert store.get_bytes(key) == data
        parts = [data[i : i + part] for i in range(0, len(data), part)]
        composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
        assert store.stored_checksum(key).split("-")[0] == base64.b64encode(composite).decode()
    destination = tmp_path / "copy.bin"
    store.get_to_file("big/from-file", destination)
    assert destination.read_bytes() == data


def test_s3_checksum_mismatch_removes_the_object(moto_endpoint, monkeypatch):
    store = make_s3_store(moto_endpoint)
    monkeypatch.setattr(store, "stored_checksum", lambda key: "AAAA")
    with pytest.raises(ObjectIntegrityError, match="expected"):
        store.put("k/obj", b"data")
    monkeypatch.undo()
    assert not store.exists("k/obj")


def test_s3_prefix_isolates_stores(moto_endpoint):
    first = make_s3_store(moto_endpoint)
    second = S3ObjectStore(
        first.bucket, "elsewhere", endpoint_url=moto_endpoint, region="us-east-1"
    )
    first.put("k/a", b"1")
    second.put("k/b", b"2")
    assert [info.key for info in first.list()] == ["k/a"]
    assert [info.key for info in second.list()] == ["k/b"]


def test_s3_rejects_tiny_multipart_parts():
    with pytest.raises(ValueError, match="multipart"):
        S3ObjectStore("bucket", multipart_chunk_size=1024)


def test_store_selected_by_url(tmp_path, moto_endpoint):
    local = open_object_store((tmp_path / "objs").as_uri())
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "objs").resolve()
    s3 = open_object_store(
        f"s3://my-bucket/some/prefix?endpoint_url={moto_endpoint}&region=eu-west-1"
    )
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "some/prefix")
    assert s3._client.meta.region_name == "eu-west-1"
    assert s3._client.meta.endpoint_url == moto_endpoint


@pytest.mark.parametrize(
    "url", ["ftp://host/x", "file://remotehost/x", "s3:///prefix", "s3://b/p?acl=public", "data"]
)
def test_bad_store_urls_are_refused(url):
    with pytest.raises(ValueError):
        open_object_store(url)
