"""Helpers shared by the registry tests: S3 stores on moto, adapter files, raw safetensors."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapter_format.peft import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from loraplex.adapters.disk_cache import AdapterSource
from loraplex.adapters.object_store import ObjectStore
from loraplex.adapters.staging import UploadedFile


def make_s3_store(endpoint: str, **options) -> ObjectStore:
    """An S3 store on a fresh bucket of the moto server."""
    from loraplex.adapters.s3_store import S3ObjectStore

    store = S3ObjectStore(
        f"lpx-{uuid.uuid4().hex[:16]}",
        "registry",
        endpoint_url=endpoint,
        region="us-east-1",
        **options,
    )
    store._client.create_bucket(Bucket=store.bucket)
    return store


@dataclass(frozen=True)
class AdapterFiles:
    folder: Path
    config: bytes
    weights: bytes

    def uploads(self) -> list[UploadedFile]:
        return [
            UploadedFile(ADAPTER_CONFIG_FILE, io.BytesIO(self.config)),
            UploadedFile(ADAPTER_WEIGHTS_FILE, io.BytesIO(self.weights)),
        ]


def config_with(adapter: AdapterFiles, **changes) -> bytes:
    config = json.loads(adapter.config)
    config.update(changes)
    return json.dumps(config).encode()


def raw_safetensors(
    header: dict, data: bytes, *, claimed_header_length: int | None = None
) -> bytes:
    """A safetensors file written by hand, so that tests can make it lie about itself."""
    header_bytes = json.dumps(header).encode()
    length = len(header_bytes) if claimed_header_length is None else claimed_header_length
    return struct.pack("<Q", length) + header_bytes + data


def publish(store: ObjectStore, version_id: int, adapter: AdapterFiles) -> AdapterSource:
    """Put an adapter's files in the store as a registry upload would; returns its source."""
    prefix = f"tenants/1/adapters/{version_id}/v1/"
    store.put(prefix + "adapter_config.json", adapter.config)
    store.put(prefix + "adapter_model.safetensors", adapter.weights)
    return AdapterSource(
        version_id=version_id,
        object_key=prefix,
        sha256=hashlib.sha256(adapter.weights).hexdigest(),
        config_sha256=hashlib.sha256(adapter.config).hexdigest(),
        size_bytes=len(adapter.weights) + len(adapter.config),
    )
