"""Token usage: one row per finished request, aggregated by tenant, adapter and time bucket.

Buckets are computed in SQL as whole multiples of `bucket` seconds since the Unix epoch (UTC),
with one expression per dialect, so that aggregation scales with the database, not with Python.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FunctionElement

from loraplex.adapters.models import Adapter, AdapterVersion, UsageRecord, utcnow


@dataclass(frozen=True)
class UsageBucket:
    start: datetime  # first instant of the bucket (UTC)
    tenant_id: int
    adapter_id: int | None  # None: requests on the base model alone
    adapter_name: str | None
    version: int | None  # set only when aggregating by version
    requests: int
    prompt_tokens: int
    completion_tokens: int


class _EpochBucket(FunctionElement[int]):
    """floor(epoch_seconds(column) / seconds) * seconds, as an integer."""

    type = BigInteger()
    inherit_cache = True


@compiles(_EpochBucket, "sqlite")
def _epoch_bucket_sqlite(element: _EpochBucket, compiler: Any, **kw: Any) -> str:
    column, seconds = list(element.clauses)
    timestamp = compiler.process(column, **kw)
    size = compiler.process(seconds, **kw)
    return f"((CAST(strftime('%s', {timestamp}) AS INTEGER) / {size}) * {size})"


@compiles(_EpochBucket, "postgresql")
def _epoch_bucket_postgresql(element: _EpochBucket, compiler: Any, **kw: Any) -> str:
    column, seconds = list(element.clauses)
    timestamp = compiler.process(column, **kw)
    size = compiler.process(seconds, **kw)
    return f"(CAST(floor(extract(epoch from {timestamp}) / {size}) AS BIGINT) * {size})"


def record_usage(
    *,
    session: Session,
    tenant_id: int,
    adapter_version_id: int | None,
    prompt_tokens: int,
    completion_tokens: int,
    at: datetime | None = None,
) -> UsageRecord:
    """Record one request's tokens (`adapter_version_id=None` for the base model)."""
    for field, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{field} must be a non-negative integer, got {value!r}")
    if at is not None and at.tzinfo is None:
        raise ValueError("usage time must be timezone-aware")
    row = UsageRecord(
        tenant_id=tenant_id,
        adapter_version_id=adapter_version_id,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        created_at=at or utcnow(),
    )
    session.add(row)
    session.commit()
    return row


def aggregate_usage(
    *,
    session: Session,
    start: datetime,
    end: datetime,
    bucket: timedelta = timedelta(hours=1),
    tenant_id: int | None = None,
    by_version: bool = False,
) -> list[UsageBucket]:
    """Totals per bucket, tenant and adapter (and version) for `start <= time < end`."""
    seconds = int(bucket.total_seconds())
    if seconds < 1 or bucket.total_seconds() != seconds:
        raise ValueError(f"bucket must be a whole number of seconds (at least 1), got {bucket}")
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end <= start:
        raise ValueError("end must be after start")
    # Inlined (a validated int) so that SELECT and GROUP BY render the very same expression.
    bucket_start = _EpochBucket(UsageRecord.created_at, literal_column(str(seconds))).label(
        "bucket_start"
    )
    version_column = AdapterVersion.version if by_version else None
    group = [bucket_start, UsageRecord.tenant_id, Adapter.id, Adapter.name]
    if version_column is not None:
        group.append(version_column)
    query = (
        select(
            *group,
            func.count().label("requests"),
            func.sum(UsageRecord.prompt_tokens).label("prompt_tokens"),
            func.sum(UsageRecord.completion_tokens).label("completion_tokens"),
        )
        .select_from(UsageRecord)
        .outerjoin(AdapterVersion, UsageRecord.adapter_version_id == AdapterVersion.id)
        .outerjoin(Adapter, AdapterVersion.adapter_id == Adapter.id)
        .where(UsageRecord.created_at >= start, UsageRecord.created_at < end)
        .group_by(*group)
        .order_by(bucket_start, UsageRecord.tenant_id, Adapter.name.nulls_first())
    )
    if version_column is not None:
        query = query.order_by(version_column)
    if tenant_id is not None:
        query = query.where(UsageRecord.tenant_id == tenant_id)
    return [
        UsageBucket(
            start=datetime.fromtimestamp(int(row.bucket_start), UTC),
            tenant_id=row.tenant_id,
            adapter_id=row.id,
            adapter_name=row.name,
            version=row.version if by_version else None,
            requests=int(row.requests),
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion_tokens),
        )
        for row in session.execute(query)
    ]


@dataclass(frozen=True)
class UsageTotals:
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_totals_by_tenant(
    *, session: Session, start: datetime, end: datetime, tenant_ids: Collection[int]
) -> dict[int, UsageTotals]:
    """Each tenant's totals for `start <= time < end` (zeros for a tenant without usage)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    totals = dict.fromkeys(tenant_ids, UsageTotals(0, 0, 0))
    if not totals:
        return totals
    rows = session.execute(
        select(
            UsageRecord.tenant_id,
            func.count(),
            func.sum(UsageRecord.prompt_tokens),
            func.sum(UsageRecord.completion_tokens),
        )
        .where(
            UsageRecord.tenant_id.in_(set(tenant_ids)),
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
        )
        .group_by(UsageRecord.tenant_id)
    )
    for tenant_id, requests, prompt, completion in rows:
        totals[tenant_id] = UsageTotals(int(requests), int(prompt), int(completion))
    return totals
