"""Putting the dashboard into the app: its routers under /dashboard, its static files, the
handlers that turn a missing session or a failed action into a page, and its state."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from loraplex.platform.dashboard import (
    adapters,
    overview,
    sign_in,
    tenant_adapters,
    tenant_keys,
    tenant_page,
    tenants,
)
from loraplex.platform.dashboard.auth import PREFIX, SESSION_COOKIE
from loraplex.platform.dashboard.dashboard_state import (
    Admin,
    DashboardState,
    PageError,
    SignInRequired,
)
from loraplex.platform.dashboard.templating import web_dir
from loraplex.platform.errors import error_body

ROUTERS = [
    sign_in.router,
    overview.router,
    tenants.router,
    tenant_page.router,
    tenant_keys.router,
    tenant_adapters.router,
    adapters.router,
]
# Adapter uploads through the dashboard, for the upload size guard.
UPLOAD_PATHS = re.compile(re.escape(PREFIX) + r"/tenants/[^/]+/adapters")


def _wants_page(request: Request) -> bool:
    return request.method == "GET" and not request.url.path.endswith(".json")


def _current_admin(request: Request, dashboard: DashboardState) -> Admin | None:
    token = request.cookies.get(SESSION_COOKIE)
    session = dashboard.sessions.get(token)
    return Admin(token, session) if token and session is not None else None


def mount_dashboard(app: FastAPI) -> DashboardState:
    dashboard = DashboardState()
    app.state.dashboard = dashboard
    for router in ROUTERS:
        app.include_router(router)
    app.mount(
        PREFIX + "/static",
        StaticFiles(directory=web_dir() / "static"),
        name="dashboard_static",
    )

    @app.exception_handler(SignInRequired)
    async def _sign_in_required(request: Request, _exc: SignInRequired) -> Response:
        if _wants_page(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            sign_in_path = request.app.url_path_for("dashboard_sign_in")
            return RedirectResponse(f"{sign_in_path}?{urlencode({'next': target})}", 303)
        if request.url.path.endswith(".json"):
            body = error_body(401, "sign in to the dashboard first", code="not_signed_in")
            return JSONResponse(body, status_code=401)
        return dashboard.page(
            request,
            "error.html",
            admin=None,
            status_code=401,
            title="Signed out",
            message="Your session has ended, so nothing was changed. Sign in and try again.",
        )

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return dashboard.page(
            request,
            "error.html",
            admin=_current_admin(request, dashboard),
            status_code=exc.status,
            title="Not found" if exc.status == 404 else "That did not work",
            message=exc.message,
        )

    return dashboard
