"""Service settings, read once from the environment (prefix ``LORAPLEX_``) and ``.env``.

Only the platform reads these; the engine receives its dataclass config and never looks at the
environment. Paths left unset are derived from ``data_dir`` so that an embedded deployment needs
no configuration at all: a SQLite file and a local object store under one folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
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

    # ---- the HTTP server -------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # An admin key to install at start (kept as a hash); unset: one is made and printed once
    # when the database has no admin key yet.
    admin_key: SecretStr | None = None
    # Largest `n` a request may ask for.
    max_n: int = Field(default=8, ge=1)
    # Sequences admitted beyond those the engine runs at once; past this, 503 at once.
    max_waiting_requests: int = Field(default=256, ge=0)
    # Retry-After (seconds) sent with a 503 when the waiting queue is full.
    overload_retry_after_seconds: int = Field(default=1, ge=1)
    log_requests: bool = False

    # ---- the engine (vLLM's option names) ---------------------------------------------------
    # Hugging Face model folder. Unset: a tiny Llama made locally by `loraplex make-model`.
    model: str | None = None
    # The name clients put in `model` for the base model. Default: the model folder's name.
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int = Field(default=64, ge=1)
    # Launch each step before the previous step's tokens reach the host (off: one at a time).
    async_scheduling: bool = True
    # GPU slots for adapters, and adapters the engine keeps in CPU memory.
    max_loras: int = Field(default=4, ge=1)
    max_cpu_loras: int | None = Field(default=None, ge=1)
    seed: int = 0

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
