"""A browser-less dashboard user for the HTML tests: an httpx client that keeps the session
cookie, reads pages with BeautifulSoup and submits forms with their CSRF token."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from bs4 import BeautifulSoup

SIGN_IN = "/dashboard/sign-in"


@dataclass
class Page:
    response: httpx.Response
    soup: BeautifulSoup

    @property
    def status(self) -> int:
        return self.response.status_code

    def one(self, selector: str):
        found = self.soup.select(selector)
        assert len(found) == 1, f"{selector!r} matched {len(found)} elements"
        return found[0]

    def csrf(self, form_selector: str = "form[data-sign-out]") -> str:
        return self.one(f"{form_selector} input[name=csrf_token]")["value"]


class DashboardUser:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, **kwargs) -> Page:
        response = self.http.get(path, **kwargs)
        return Page(response, BeautifulSoup(response.text, "html.parser"))

    def post(self, path: str, data: dict[str, str], **kwargs) -> Page:
        response = self.http.post(path, data=data, **kwargs)
        return Page(response, BeautifulSoup(response.text, "html.parser"))

    def follow(self, page: Page) -> Page:
        """The page a 303 after a form leads to."""
        assert page.status == 303, (page.status, page.response.text[:2000])
        return self.get(page.response.headers["location"])

    def sign_in(self, key: str, next_path: str = "/dashboard") -> Page:
        form = self.get(f"{SIGN_IN}?next={next_path}")
        assert form.status == 200
        token = form.one("[data-sign-in-form] input[name=csrf_token]")["value"]
        return self.post(SIGN_IN, {"csrf_token": token, "key": key, "next": next_path})

    def submit(self, page: Page, form_selector: str, values: dict[str, str], **kwargs) -> Page:
        """Post the form `form_selector` of `page` with its hidden fields and `values`."""
        form = page.one(form_selector)
        data = {
            field["name"]: field.get("value", "") for field in form.select("input[type=hidden]")
        }
        data.update(values)
        return self.post(form["action"], data, **kwargs)
