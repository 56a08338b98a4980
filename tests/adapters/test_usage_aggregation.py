from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loraplex.adapters.tenants import create_tenant
from loraplex.adapters.usage import aggregate_usage, record_usage
from tests.adapters.registry_helpers import record_version

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
def usage_data(session):
    acme = create_tenant(session=session, name="acme")
    other = create_tenant(session=session, name="other")
    bot_v1 = record_version(session, acme.id, "bot")
    bot_v2 = record_version(session, acme.id, "bot")
    helper = record_version(session, other.id, "helper")
    rows = [
        (acme, bot_v1, 10, 5, T0 + timedelta(minutes=5)),
        (acme, bot_v2, 20, 7, T0 + timedelta(minutes=59, seconds=59)),
        (acme, None, 3, 1, T0 + timedelta(minutes=30)),
        (acme, bot_v2, 100, 50, T0 + timedelta(hours=1)),
        (other, helper, 1, 1, T0 + timedelta(minutes=1)),
        (acme, bot_v1, 999, 999, T0 - timedelta(seconds=1)),  # before the window
        (acme, bot_v1, 999, 999, T0 + timedelta(hours=2)),  # at the exclusive end
    ]
    for tenant, version, prompt, completion, at in rows:
        record_usage(
            session=session,
            tenant_id=tenant.id,
            adapter_version_id=version.id if version else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            at=at,
        )
    return acme, other


def _summary(buckets):
    return [
        (b.start, b.adapter_name, b.version, b.requests, b.prompt_tokens, b.completion_tokens)
        for b in buckets
    ]


def test_hourly_by_adapter(session, usage_data):
    acme, _ = usage_data
    buckets = aggregate_usage(
        session=session, start=T0, end=T0 + timedelta(hours=2), tenant_id=acme.id
    )
    assert all(b.tenant_id == acme.id for b in buckets)
    # Base-model usage (no adapter name) sorts first within a bucket on both databases.
    assert _summary(buckets) == [
        (T0, None, None, 1, 3, 1),
        (T0, "bot", None, 2, 30, 12),
        (T0 + timedelta(hours=1), "bot", None, 1, 100, 50),
    ]


def test_by_version_all_tenants_daily(session, usage_data):
    acme, other = usage_data
    buckets = aggregate_usage(
        session=session,
        start=T0,
        end=T0 + timedelta(hours=2),
        bucket=timedelta(days=1),
        by_version=True,
    )
    day = datetime(2026, 3, 1, tzinfo=UTC)
    by_key = {(b.tenant_id, b.adapter_name, b.version): b for b in buckets}
    assert {b.start for b in buckets} == {day}
    assert by_key[(acme.id, "bot", 1)].prompt_tokens == 10
    assert by_key[(acme.id, "bot", 2)].prompt_tokens == 120
    assert by_key[(acme.id, "bot", 2)].requests == 2
    assert by_key[(acme.id, None, None)].completion_tokens == 1
    assert by_key[(other.id, "helper", 1)].requests == 1
    assert len(buckets) == 4


def test_fifteen_minute_buckets(session, usage_data):
    acme, _ = usage_data
    buckets = aggregate_usage(
        session=session,
        start=T0,
        end=T0 + timedelta(hours=1),
        bucket=timedelta(minutes=15),
        tenant_id=acme.id,
    )
    starts = {(b.start, b.adapter_name): b.prompt_tokens for b in buckets}
    assert starts == {
        (T0, "bot"): 10,
        (T0 + timedelta(minutes=30), None): 3,
        (T0 + timedelta(minutes=45), "bot"): 20,
    }


def test_record_usage_validates(session):
    tenant = create_tenant(session=session, name="acme")
    with pytest.raises(ValueError, match="prompt_tokens"):
        record_usage(
            session=session,
            tenant_id=tenant.id,
            adapter_version_id=None,
            prompt_tokens=-1,
            completion_tokens=0,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        record_usage(
            session=session,
            tenant_id=tenant.id,
            adapter_version_id=None,
            prompt_tokens=1,
            completion_tokens=2,
            at=T0.replace(tzinfo=None),
        )
    record = record_usage(
        session=session,
        tenant_id=tenant.id,
        adapter_version_id=None,
        prompt_tokens=1,
        completion_tokens=2,
    )
    assert record.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": timedelta(milliseconds=500)}, "whole number of seconds"),
        ({"start": T0.replace(tzinfo=None)}, "timezone-aware"),
        ({"end": T0 - timedelta(hours=1)}, "after start"),
    ],
)
def test_aggregate_validates(session, kwargs, message):
    arguments = {"start": T0, "end": T0 + timedelta(hours=1)} | kwargs
    with pytest.raises(ValueError, match=message):
        aggregate_usage(session=session, **arguments)
