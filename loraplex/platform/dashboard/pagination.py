"""Page numbers and search boxes of the dashboard's listings, as links that keep each other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlencode

from loraplex.platform.dashboard.dashboard_state import PageError

PAGE_SIZE = 50
MAX_PAGE = 10_000_000


def page_number(raw: str | None) -> int:
    """The 1-based page of a `?page=` value (1 when absent); a 400 page for anything else."""
    if raw is None or raw == "":
        return 1
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise PageError(400, f"page must be a whole number from 1 to {MAX_PAGE}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Pager:
    path: str  # the listing's path
    page: int  # 1-based
    total: int  # matching rows on all pages
    search: str = ""
    size: int = PAGE_SIZE
    anchor: str = ""  # where on the page the links land, e.g. "adapters"
    keep: dict[str, str] = field(default_factory=dict)  # other query values to carry along

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def first_shown(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last_shown(self) -> int:
        return min(self.offset + self.size, self.total)

    def href(self, page: int) -> str:
        query = dict(self.keep)
        if self.search:
            query["q"] = self.search
        if page > 1:
            query["page"] = str(page)
        suffix = f"?{urlencode(query)}" if query else ""
        return self.path + suffix + (f"#{self.anchor}" if self.anchor else "")

    @property
    def previous(self) -> str | None:
        return self.href(self.page - 1) if self.page > 1 else None

    @property
    def next(self) -> str | None:
        return self.href(self.page + 1) if self.page < self.pages else None
