"""The admin web dashboard at /dashboard: server-rendered pages (templates and static files in
`web/`, shipped as package data), one router per page, sign-in with an admin key."""

from __future__ import annotations

from loraplex.platform.dashboard.mount import UPLOAD_PATHS, mount_dashboard

__all__ = ["UPLOAD_PATHS", "mount_dashboard"]
