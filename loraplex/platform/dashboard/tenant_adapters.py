"""A tenant's adapters from its page: upload a version (two files or one archive) and delete an
adapter or one version. Uploads go through the same checks as the tenant API's; what they
refuse is shown beside the upload form."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from loraplex.platform.adapter_service import delete_adapter_or_version, publish_upload
from loraplex.platform.dashboard.auth import PREFIX, AdminDep, read_form
from loraplex.platform.dashboard.dashboard_state import DashboardDep, PageError
from loraplex.platform.dashboard.forms import form_text
from loraplex.platform.dashboard.tenant_page import FormErrors, tenant_id_of, tenant_page
from loraplex.platform.deps import StateDep
from loraplex.platform.errors import APIError, as_api_error
from loraplex.platform.schemas import AdapterVersionOut
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)
MAX_UPLOAD_FILES = 3  # config, weights, or one archive (one more to report "too many")
NO_FILES = "choose the adapter's two files (config and weights), or one archive holding them"


def _chosen_files(form: FormData, field: str) -> list[UploadFile]:
    # A file input left empty is still sent, as a part without a file name.
    return [f for f in form.getlist(field) if isinstance(f, UploadFile) and f.filename]


@router.post("/tenants/{tenant_id}/adapters", name="dashboard_adapter_upload")
async def upload(
    tenant_id: str, request: Request, admin: AdminDep, state: StateDep, dashboard: DashboardDep
) -> Response:
    number = tenant_id_of(tenant_id)
    form = await read_form(request, admin, max_files=MAX_UPLOAD_FILES)
    try:
        name = form_text(form, "name", max_length=200)
        files = _chosen_files(form, "files")
        archives = _chosen_files(form, "archive")

        def publish() -> AdapterVersionOut:
            if not files and not archives:
                raise APIError(400, NO_FILES, param="files")
            if len(archives) > 1:
                raise APIError(400, "choose one archive", param="archive")
            with state.sessions() as session:
                row = publish_upload(
                    state,
                    session=session,
                    tenant_id=number,
                    name=name,
                    files=files,
                    archive=archives[0] if archives else None,
                )
                return AdapterVersionOut.from_row(name, row)

        try:
            version = await run_in_threadpool(publish)
        except (APIError, LookupError, ValueError) as exc:  # every refusal of the registry
            error = as_api_error(exc)
            assert error is not None
            errors = FormErrors(upload=error.message, upload_name=name)
            return await tenant_page(
                request, state, dashboard, admin, number, errors=errors, status_code=error.status
            )
    finally:
        await form.close()
    admin.session.flash(
        "success",
        f"Uploaded {version.id}: rank {version.rank}, {len(version.target_modules)} "
        "target modules.",
    )
    target = request.app.url_path_for("dashboard_tenant", tenant_id=tenant_id)
    return RedirectResponse(target, status_code=303)


def _version_of(text: str) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise PageError(400, f"version must be a positive whole number, got {text!r}")
    return int(text)


def _delete(state: AppState, tenant_id: int, name: str, version: int | None) -> list[int]:
    with state.sessions() as session:
        return delete_adapter_or_version(
            state, session=session, tenant_id=tenant_id, name=name, version=version
        )


@router.post("/tenants/{tenant_id}/adapters/delete", name="dashboard_adapter_delete")
async def delete(tenant_id: str, request: Request, admin: AdminDep, state: StateDep) -> Response:
    number = tenant_id_of(tenant_id)
    form = await read_form(request, admin)
    name = form_text(form, "name", max_length=200)
    version = _version_of(form_text(form, "version", max_length=20))
    try:
        removed = await run_in_threadpool(_delete, state, number, name, version)
    except (APIError, LookupError, ValueError) as exc:
        error = as_api_error(exc)
        assert error is not None
        raise PageError(error.status, error.message) from None
    await state.adapters.forget(removed)
    what = name if version is None else f"{name}:{version}"
    admin.session.flash("success", f"Deleted {what}.")
    target = request.app.url_path_for("dashboard_tenant", tenant_id=tenant_id)
    return RedirectResponse(target, status_code=303)
