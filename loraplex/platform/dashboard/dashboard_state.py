"""What the dashboard keeps for the app's lifetime: templates, sign-in sessions and the live
history, on `app.state.dashboard`; and the exceptions its handlers turn into pages."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from loraplex.platform.dashboard.live import LiveHistory, read_sample, sampling
from loraplex.platform.dashboard.sessions import DashboardSession, SessionStore
from loraplex.platform.dashboard.templating import create_templates, render
from loraplex.platform.state import AppState


class SignInRequired(Exception):
    """No live session: pages redirect to the sign-in form, other requests get a 401."""


class PageError(Exception):
    """A failure shown to the operator as a page with `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Admin:
    """The signed-in operator of this request."""

    token: str  # the session cookie's value
    session: DashboardSession


@dataclass
class DashboardState:
    templates: Jinja2Templates = field(default_factory=create_templates)
    sessions: SessionStore = field(default_factory=SessionStore)
    history: LiveHistory = field(default_factory=LiveHistory)

    def sampling(self, state: AppState) -> AbstractAsyncContextManager[None]:
        """Feed the live history from the service's metrics while the block runs."""
        return sampling(self.history, lambda: read_sample(state))

    def page(
        self,
        request: Request,
        name: str,
        *,
        admin: Admin | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        """Render a page; a signed-in one shows (and so consumes) the session's messages."""
        flashes = admin.session.take_flashes() if admin is not None else []
        return render(
            self.templates,
            request,
            name,
            {"admin": admin, "flashes": flashes, **context},
            status_code=status_code,
        )


def get_dashboard(request: Request) -> DashboardState:
    return request.app.state.dashboard


DashboardDep = Annotated[DashboardState, Depends(get_dashboard)]
