"""Service settings, read once from the environment (prefix ``LORAPLEX_``) and ``.env``.

Only the platform reads these; the engine receives its dataclass config and never looks at the
environment. Paths left unset are derived from ``data_dir`` so that an embedded deployment needs
no configuration at all: a SQLite file and a local object store under one folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAPLEX_", env_file=".env", extra="ignore", validate_default=True
    )

    # Folder for everything the embedded deployment writes (database, objects, caches).
    data_dir: Path = Path("./data")
    # SQLAlchemy URL; `postgresql://` is mapped to the psycopg driver. Default: SQLite in data_dir.
    database_url: str = ""
    # `file:///abs/path` or `s3://bucket/prefix`. Default: the `objects` folder in data_dir.
    object_store_url: str = ""
    # S3-compatible endpoint (MinIO, moto) and region; None lets boto3 use its own defaults.
    object_store_endpoint_url: str | None = None
    object_store_region: str | None = None
    # Local disk tier of the adapter cache. Default: the `adapter-cache` folder in data_dir.
    adapter_cache_dir: Path | None = None
    adapter_disk_cache_bytes: int = Field(default=20 * GIB, gt=0)
    # How many adapters stay loaded in CPU memory.
    adapter_cpu_cache_entries: int = Field(default=32, gt=0)
    # Largest LoRA rank an upload may have; the engine sizes its slots to this.
    max_lora_rank: int = Field(default=64, gt=0)
    # Platform-wide ceiling on one upload's unpacked size; a tenant's quota may only lower it.
    max_upload_bytes: int = Field(default=2 * GIB, gt=0)
    # Objects younger than this are never swept, so uploads in flight keep their bytes.
    orphan_grace_seconds: int = Field(default=3600, ge=0)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        self.data_dir = data_dir
        if not self.database_url:
            self.database_url = f"sqlite:///{data_dir / 'loraplex.db'}"
        if not self.object_store_url:
            self.object_store_url = (data_dir / "objects").as_uri()
        if self.adapter_cache_dir is None:
            self.adapter_cache_dir = data_dir / "adapter-cache"
        return self


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; `get_settings.cache_clear()` re-reads the environment."""
    return Settings()
