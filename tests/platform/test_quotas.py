"""Per-tenant rate limits through the API (429 + Retry-After), and the limiter's window."""

from __future__ import annotations

import pytest

from loraplex.platform.admission import AdmissionControl, Overloaded
from loraplex.platform.quotas import RateLimited, TenantRateLimiter


def _complete(http, tenant, max_tokens=4):
    return http.post(
        "/v1/completions",
        json={
            "model": "tiny-llama",
            "prompt": "count to ten",
            "max_tokens": max_tokens,
            "ignore_eos": True,
        },
        headers=tenant.headers,
    )


def test_requests_per_minute(http, platform, make_tenant):
    limited, other = make_tenant(requests_per_minute=2), make_tenant()
    assert [_complete(http, limited).status_code for _ in range(2)] == [200, 200]
    refused = _complete(http, limited)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "2 requests per minute" in refused.json()["error"]["message"]
    assert _complete(http, other).status_code == 200  # other tenants are not affected
    raised = http.patch(
        f"/admin/v1/tenants/{limited.id}",
        json={"requests_per_minute": 100},
        headers=platform.admin_headers,
    )
    assert raised.status_code == 200
    assert _complete(http, limited).status_code == 200  # and it serves normally again


def test_tokens_per_minute(http, platform, make_tenant):
    limited = make_tenant(tokens_per_minute=30)
    first = _complete(http, limited, max_tokens=30)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 30
    refused = _complete(http, limited)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "tokens per minute" in refused.json()["error"]["message"]
    http.patch(
        f"/admin/v1/tenants/{limited.id}",
        json={"tokens_per_minute": None},
        headers=platform.admin_headers,
    )
    assert _complete(http, limited).status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_request_window_slides():
    clock = FakeClock()
    limiter = TenantRateLimiter(clock=clock)
    limiter.admit_request(1, 2)
    clock.now += 20
    limiter.admit_request(1, 2)
    with pytest.raises(RateLimited) as refused:
        limiter.admit_request(1, 2)
    assert refused.value.retry_after == 40  # when the first request leaves the window
    limiter.admit_request(2, 2)  # per tenant
    limiter.admit_request(1, None)  # no limit
    clock.now += 40
    limiter.admit_request(1, 2)
    with pytest.raises(RateLimited):
        limiter.admit_request(1, 2)


def test_token_window_counts_finished_requests_and_admits_on_an_empty_window():
    clock = FakeClock()
    limiter = TenantRateLimiter(clock=clock)
    limiter.check_tokens(1, 100, incoming=500)  # an empty window admits anything once
    limiter.record_tokens(1, 60)
    clock.now += 10
    limiter.record_tokens(1, 30)
    limiter.check_tokens(1, 100, incoming=10)
    with pytest.raises(RateLimited) as refused:
        limiter.check_tokens(1, 100, incoming=20)
    assert refused.value.retry_after == 50  # once the 60 expire, 30 + 20 fit
    assert limiter.tokens_in_window(1) == 90
    clock.now += 50
    assert limiter.tokens_in_window(1) == 30
    limiter.check_tokens(1, 100, incoming=20)


def test_admission_bounds_sequences_in_flight():
    control = AdmissionControl(running=2, waiting=1, retry_after=3)
    first = control.admit(2)
    second = control.admit(1)
    with pytest.raises(Overloaded) as refused:
        control.admit(1)
    assert refused.value.retry_after == 3 and control.in_flight == 3
    first.release()
    first.release()  # releasing twice gives back once
    assert control.in_flight == 1
    third = control.admit(2)
    second.release()
    third.release()
    assert control.in_flight == 0
    control.admit(10).release()  # larger than the capacity: runs alone on an idle server
