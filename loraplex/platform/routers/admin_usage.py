"""Admin: token usage per tenant, adapter (and version) and time bucket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from loraplex.adapters.usage import aggregate_usage
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.errors import APIError
from loraplex.platform.schemas import DatabaseId, ListOf, UsageOut

router = APIRouter(prefix="/admin/v1/usage", tags=["Admin"], dependencies=[Depends(require_admin)])
DEFAULT_SPAN = timedelta(days=1)


def _aware(moment: datetime | None) -> datetime | None:
    # A time without a zone is read as UTC, the zone usage is stored in.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


@router.get(
    "",
    response_model=ListOf[UsageOut],
    summary="Usage per tenant, adapter and hour (or another bucket size)",
    description="Requests and tokens in `[start, end)`, by default the last 24 hours.",
)
def usage(
    session: SessionDep,
    start: Annotated[datetime | None, Query(description="default: end minus 24 hours")] = None,
    end: Annotated[datetime | None, Query(description="default: now")] = None,
    bucket_seconds: Annotated[int, Query(ge=60, le=31 * 86400)] = 3600,
    tenant_id: Annotated[DatabaseId | None, Query()] = None,
    by_version: Annotated[bool, Query(description="split adapters by version")] = False,
) -> ListOf[UsageOut]:
    try:
        end = _aware(end) or datetime.now(UTC)
        start = _aware(start) or end - DEFAULT_SPAN
    except OverflowError:
        raise APIError(400, "start or end is out of range", param="start") from None
    buckets = aggregate_usage(
        session=session,
        start=start,
        end=end,
        bucket=timedelta(seconds=bucket_seconds),
        tenant_id=tenant_id,
        by_version=by_version,
    )
    return ListOf[UsageOut](data=[UsageOut.from_bucket(b) for b in buckets])
