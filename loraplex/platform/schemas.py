"""Request and response bodies of the adapter and admin APIs (pydantic models).

Database rows are turned into these explicitly (`from_row`), so that no column reaches a
response by accident: a key's hash never does, and its plaintext only in `NewKeyOut`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from loraplex.adapters.models import Adapter, AdapterVersion, ApiKey, Tenant
from loraplex.adapters.registry import MAX_NAME_LENGTH
from loraplex.adapters.usage import UsageBucket

T = TypeVar("T")
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

ResourceName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[a-z0-9][a-z0-9._-]*$"),
]
SmallQuota = Annotated[int, Field(strict=True, gt=0, le=INT32_MAX)]
LargeQuota = Annotated[int, Field(strict=True, gt=0, le=INT64_MAX)]
DatabaseId = Annotated[int, Field(ge=1, le=INT32_MAX)]
# A search within names: their alphabet (any case), and "/" between a tenant and an adapter.
SearchText = Annotated[str, StringConstraints(max_length=129, pattern=r"^[A-Za-z0-9._/ -]*$")]


class ListOf(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]


# ---- tenants ------------------------------------------------------------------------------


class TenantQuotas(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: no tenant-specific limit (the platform's own limits still apply).
    max_adapters: SmallQuota | None = None
    requests_per_minute: SmallQuota | None = None
    tokens_per_minute: LargeQuota | None = None
    max_upload_bytes: LargeQuota | None = None


class TenantCreate(TenantQuotas):
    name: ResourceName


class TenantUpdate(TenantQuotas):
    """Fields left out stay as they are; a quota sent as null removes the tenant's limit."""

    disabled: bool | None = None


class TenantOut(BaseModel):
    id: int
    object: Literal["tenant"] = "tenant"
    name: str
    created_at: datetime
    disabled: bool
    max_adapters: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_upload_bytes: int | None

    @classmethod
    def from_row(cls, tenant: Tenant) -> TenantOut:
        return cls.model_validate(tenant, from_attributes=True)


# ---- API keys -----------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(max_length=128)] = ""


class KeyOut(BaseModel):
    id: int
    object: Literal["api_key"] = "api_key"
    prefix: str  # the key's first characters, to recognise it; the rest is never shown again
    name: str
    role: str
    tenant_id: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, key: ApiKey) -> KeyOut:
        return cls.model_validate(key, from_attributes=True)


class NewKeyOut(KeyOut):
    key: str  # the plaintext key: shown in this response only


# ---- adapters -----------------------------------------------------------------------------


class AdapterVersionOut(BaseModel):
    id: str  # "name:version", usable as a request's `model`
    object: Literal["adapter.version"] = "adapter.version"
    name: str
    version: int
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: list[str]
    size_bytes: int
    sha256: str
    status: str
    created_at: datetime

    @classmethod
    def from_row(cls, name: str, row: AdapterVersion) -> AdapterVersionOut:
        return cls(
            id=f"{name}:{row.version}",
            name=name,
            version=row.version,
            rank=row.rank,
            alpha=row.alpha,
            use_rslora=row.use_rslora,
            target_modules=list(row.target_modules),
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            status=row.status,
            created_at=row.created_at,
        )


class AdapterOut(BaseModel):
    id: str  # the adapter's name: as a request's `model`, its newest version
    object: Literal["adapter"] = "adapter"
    name: str
    base_model: str
    created_at: datetime
    latest_version: int | None
    versions: list[AdapterVersionOut]

    @classmethod
    def from_row(cls, adapter: Adapter, versions: list[AdapterVersion]) -> AdapterOut:
        rendered = [AdapterVersionOut.from_row(adapter.name, v) for v in versions]
        return cls(
            id=adapter.name,
            name=adapter.name,
            base_model=adapter.base_model,
            created_at=adapter.created_at,
            latest_version=max((v.version for v in versions), default=None),
            versions=rendered,
        )


class AdminAdapterVersionOut(AdapterVersionOut):
    """A version as the admin API lists it: with the registry's id, which the engine state
    (`/admin/v1/engine`) uses for slots and loaded adapters."""

    version_id: int

    @classmethod
    def from_admin_row(cls, name: str, row: AdapterVersion) -> AdminAdapterVersionOut:
        return cls(version_id=row.id, **AdapterVersionOut.from_row(name, row).model_dump())


class TenantAdapterOut(AdapterOut):
    """An adapter as the admin API lists it: with its tenant."""

    tenant_id: int
    tenant_name: str
    versions: list[AdminAdapterVersionOut]

    @classmethod
    def from_tenant_row(
        cls, tenant_name: str, adapter: Adapter, versions: list[AdapterVersion]
    ) -> TenantAdapterOut:
        summary = AdapterOut.from_row(adapter, versions).model_dump(exclude={"versions"})
        return cls(
            tenant_id=adapter.tenant_id,
            tenant_name=tenant_name,
            versions=[AdminAdapterVersionOut.from_admin_row(adapter.name, v) for v in versions],
            **summary,
        )


class DeletedOut(BaseModel):
    id: str
    object: Literal["adapter.deleted"] = "adapter.deleted"
    deleted: bool = True


# ---- engine and usage ---------------------------------------------------------------------


class SlotOut(BaseModel):
    slot: int
    adapter_version_id: int | None
    adapter: str | None  # "tenant_id/name:vN"
    pinned: bool
    idle_seconds: float | None


class EngineConfigOut(BaseModel):
    """How the engine was started (resolved values: a dtype of "auto" shows what it chose)."""

    model_path: str
    dtype: str
    device: str
    quantization: str | None
    kv_cache_dtype: str
    block_size: int  # tokens per KV-cache block
    tensor_parallel_size: int
    max_num_seqs: int  # sequences in one batch
    max_num_batched_tokens: int  # tokens in one step
    async_scheduling: bool  # steps launched before the previous step's tokens are read
    max_lora_rank: int
    max_cpu_loras: int | None  # adapters kept in the engine's CPU memory


class EngineOut(BaseModel):
    model: str
    config: EngineConfigOut
    healthy: bool
    max_model_len: int
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_preemptions: int
    sequences_in_flight: int  # admitted by the server, running or queued
    queue_capacity: int  # sequences admitted at most before new requests get a 503
    max_loras: int
    slots: list[SlotOut]
    loaded_adapter_ids: list[int]
    slot_loads: int
    slot_evictions: int


class UsageOut(BaseModel):
    start: datetime
    tenant_id: int
    adapter: str | None  # None: the base model
    version: int | None
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @classmethod
    def from_bucket(cls, bucket: UsageBucket) -> UsageOut:
        return cls(
            start=bucket.start,
            tenant_id=bucket.tenant_id,
            adapter=bucket.adapter_name,
            version=bucket.version,
            requests=bucket.requests,
            prompt_tokens=bucket.prompt_tokens,
            completion_tokens=bucket.completion_tokens,
        )
