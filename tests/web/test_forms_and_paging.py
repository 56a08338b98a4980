"""Forms read into the admin API's request models, and the links of paged listings."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from loraplex.platform.dashboard.dashboard_state import PageError
from loraplex.platform.dashboard.forms import form_text, parse_form
from loraplex.platform.dashboard.pagination import Pager, page_number
from loraplex.platform.schemas import TenantCreate, TenantUpdate


def test_quota_fields_become_numbers_or_no_limit():
    result = parse_form(
        FormData({"max_adapters": "1,000", "tokens_per_minute": "", "requests_per_minute": "5"}),
        TenantUpdate,
    )
    assert result.errors == {}
    assert result.model.model_dump(exclude_unset=True) == {
        "max_adapters": 1000,
        "requests_per_minute": 5,
        "tokens_per_minute": None,
        "max_upload_bytes": None,
    }


def test_bad_fields_are_reported_by_name():
    result = parse_form(
        FormData({"name": "ok", "max_adapters": "1.5", "max_upload_bytes": "0"}),
        TenantCreate,
        text_fields=("name",),
    )
    assert set(result.errors) == {"max_adapters", "max_upload_bytes"} and result.model is None
    assert "whole number" in result.errors["max_adapters"]
    assert "greater than 0" in result.errors["max_upload_bytes"]
    assert result.values["max_upload_bytes"] == "0"


def test_form_text_refuses_files_and_overlong_values():
    assert form_text(FormData({"a": "  x "}), "a") == "x" and form_text(FormData(), "a") == ""
    with pytest.raises(PageError, match="at most 3"):
        form_text(FormData({"a": "abcd"}), "a", max_length=3)


@pytest.mark.parametrize("raw", ["0", "-1", "x", "1.5", "١", "99999999999"])
def test_page_numbers_must_be_positive_whole_numbers(raw):
    with pytest.raises(PageError) as refused:
        page_number(raw)
    assert refused.value.status == 400
    assert page_number(None) == page_number("") == 1 and page_number("7") == 7


def test_pager_links_keep_the_search_and_land_on_the_anchor():
    pager = Pager("/dashboard/tenants/3", 2, 120, "bot x", anchor="adapters", size=50)
    assert (pager.offset, pager.pages, pager.first_shown, pager.last_shown) == (50, 3, 51, 100)
    assert pager.previous == "/dashboard/tenants/3?q=bot+x#adapters"
    assert pager.next == "/dashboard/tenants/3?q=bot+x&page=3#adapters"
    last = Pager("/dashboard/tenants", 3, 120)
    assert last.next is None and last.last_shown == 120
    assert Pager("/p", 1, 0).pages == 1 and Pager("/p", 1, 0).first_shown == 0
