"""The templates on their own: names that could hold markup render as text everywhere, even
though the registry's name rules keep such names out today."""

from __future__ import annotations

import fnmatch
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from bs4 import BeautifulSoup

from loraplex.adapters.listing import ResultPage, VersionLabel
from loraplex.platform.dashboard.cache_tiers import Placement
from loraplex.platform.dashboard.pagination import Pager
from loraplex.platform.dashboard.sessions import DashboardSession
from loraplex.platform.dashboard.templating import create_templates, web_dir

HOSTILE = '<script>alert("x")</script>'
NOW = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def _render(template: str, **context) -> BeautifulSoup:
    templates = create_templates()
    session = DashboardSession(key_id=1, key_label=HOSTILE, csrf_token="t", last_seen=0)
    context = {
        "path_for": lambda name, **params: "/" + name + "/" + "/".join(params.values()),
        "admin": SimpleNamespace(session=session),
        "flashes": [],
        **context,
    }
    html = templates.get_template(template).render(**context)
    assert HOSTILE not in html
    return BeautifulSoup(html, "html.parser")


def _version(version_id: int):
    return SimpleNamespace(
        id=f"{HOSTILE}:1", version=1, version_id=version_id, status="ready", rank=8, alpha=16.0,
        use_rslora=False, target_modules=[HOSTILE], size_bytes=1234, created_at=NOW,
    )  # fmt: skip


def test_adapter_and_tenant_names_render_as_text_on_the_adapters_page():
    adapter = SimpleNamespace(
        tenant_id=1, tenant_name=HOSTILE, name=HOSTILE, latest_version=1, versions=[_version(5)]
    )
    soup = _render(
        "adapters.html",
        found=ResultPage([adapter], 1, 50, 0),
        search_error=None,
        pager=Pager("/dashboard/adapters", 1, 1, HOSTILE),
        locator=SimpleNamespace(locate=lambda _id: Placement("gpu", 0)),
        engine=SimpleNamespace(max_loras=2),
    )
    assert soup.select_one("[data-adapter-row]")["data-adapter-row"] == f"{HOSTILE}/{HOSTILE}"
    assert soup.select_one("tbody th").text == HOSTILE
    assert soup.select_one("#search-adapters")["value"] == HOSTILE
    assert soup.select_one(".who-key").text == HOSTILE
    assert not [s for s in soup.find_all("script") if not s.get("src")]


def test_slot_adapter_names_render_as_text():
    slot = SimpleNamespace(slot=0, pinned=True, idle_seconds=3.0)
    label = VersionLabel(5, 1, HOSTILE, HOSTILE, 1)
    view = SimpleNamespace(slot=slot, reference=label.reference)
    live = SimpleNamespace(slots=[view], engine=SimpleNamespace(healthy=True))
    soup = _render("_slots.html", live=live)
    assert soup.select_one("[data-slot-adapter]")["data-slot-adapter"] == label.reference
    assert soup.select_one(".slot-adapter").text == label.reference
    assert soup.find("script") is None


def test_a_stopped_engine_says_so_instead_of_slots():
    live = SimpleNamespace(slots=[], engine=SimpleNamespace(healthy=False))
    assert "engine has stopped" in _render("_slots.html", live=live).text


def test_error_messages_render_as_text():
    soup = _render("error.html", title=HOSTILE, message=HOSTILE)
    assert soup.select_one("[data-error-message]").text == HOSTILE


def test_every_template_and_static_file_is_package_data():
    """An installed package finds what the pages need: pyproject's package data covers every
    file of web/, reached through the loraplex/web link."""
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["loraplex"]
    folder = web_dir()
    assert folder.resolve() == (root / "web").resolve()
    shipped = sorted(p for p in folder.rglob("*") if p.is_file())
    assert {p.name for p in shipped} >= {"base.html", "overview.html", "dashboard.css", "live.js"}
    for path in shipped:
        relative = f"web/{path.relative_to(folder).as_posix()}"
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
