"""Reading the dashboard's forms into the admin API's own request models, so that a form
accepts exactly what the API accepts and reports the same problems, field by field."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from loraplex.adapters.tenants import QUOTA_FIELDS
from loraplex.platform.dashboard.dashboard_state import PageError

QUOTA_LABELS = {
    "max_adapters": "Adapters",
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "max_upload_bytes": "Upload size (bytes)",
}


@dataclass(frozen=True)
class FormResult:
    values: dict[str, str]  # what was typed, to fill the form again after an error
    errors: dict[str, str]  # field -> message; empty when the form is valid
    model: BaseModel | None  # the validated request, when there are no errors


def form_text(form: FormData, name: str, *, max_length: int = 1000) -> str:
    """A text field of the form ("" when missing); a file or an overlong value is a 400."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise PageError(400, f"the field {name!r} must be text")
    if len(value) > max_length:
        raise PageError(400, f"the field {name!r} must be at most {max_length} characters")
    return value.strip()


def _whole_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def parse_form(
    form: FormData,
    model: type[BaseModel],
    *,
    text_fields: Iterable[str] = (),
    number_fields: Iterable[str] = QUOTA_FIELDS,
) -> FormResult:
    """Validate `form` as `model`: text fields as typed, number fields as whole numbers where
    an empty box means None (no limit)."""
    values: dict[str, str] = {}
    data: dict[str, object] = {}
    errors: dict[str, str] = {}
    for name in text_fields:
        values[name] = data[name] = form_text(form, name, max_length=200)
    for name in number_fields:
        text = form_text(form, name, max_length=40).replace(",", "").replace("_", "")
        values[name] = text
        number = _whole_number(text)
        if text and number is None:
            errors[name] = "enter a whole number, or leave it empty for no limit"
        data[name] = number
    try:
        validated = model.model_validate(data)  # a box that held no number counts as empty
    except ValidationError as exc:
        for problem in exc.errors():
            location = problem.get("loc", ())
            field = str(location[0]) if location else "form"
            errors.setdefault(field, problem.get("msg", "invalid value"))
    if errors:
        return FormResult(values, errors, None)
    return FormResult(values, {}, validated)
