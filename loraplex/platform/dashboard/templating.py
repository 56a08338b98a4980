"""The dashboard's templates and static files (package data under `loraplex/web`, the
repository's `web/` folder), the Jinja environment with its filters, and page rendering.

Autoescaping is always on, so every value from the registry (key names, file names in error
messages) renders as text. Pages carry a strict Content-Security-Policy: scripts and styles
come from the dashboard's own static files only.
"""

from __future__ import annotations

import importlib.resources
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from loraplex import __version__
from loraplex.platform.dashboard.charts import format_number

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def web_dir() -> Path:
    """The folder holding `templates/` and `static/`."""
    folder = Path(str(importlib.resources.files("loraplex") / "web"))
    if not (folder / "templates").is_dir():
        raise RuntimeError(f"the dashboard's templates are missing from {folder}")
    return folder


def format_bytes(size: int | float | None) -> str:
    if size is None:
        return "—"
    if abs(size) < 1024:
        return f"{size:.0f} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_seconds(seconds: float | None) -> str:
    """An idle time, in words: "4 s", "3 min", "2 h"."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_quota(value: int | None) -> str:
    return "no limit" if value is None else f"{value:,}"


def create_templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(web_dir() / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        number=format_number,
        bytes=format_bytes,
        time=format_time,
        seconds=format_seconds,
        quota=format_quota,
    )
    environment.globals["version"] = __version__
    return Jinja2Templates(env=environment)


def render(
    templates: Jinja2Templates,
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    """The page `name`, with the security headers and `path_for` (a route's path) in scope."""
    context = {"path_for": request.app.url_path_for, **context}
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=SECURITY_HEADERS
    )


def render_fragment(templates: Jinja2Templates, template: str, **context: Any) -> str:
    return templates.get_template(template).render(**context)
