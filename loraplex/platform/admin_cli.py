"""`loraplex admin create-tenant NAME` and `loraplex admin create-key TENANT`, for scripts,
against the database the server uses (LORAPLEX_DATABASE_URL or the embedded one)."""

from __future__ import annotations

import argparse


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="default: LORAPLEX_DATABASE_URL or the embedded one")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    tenant = actions.add_parser("create-tenant", help="create a tenant; prints its id")
    tenant.add_argument("name")
    tenant.add_argument("--max-adapters", type=int)
    tenant.add_argument("--requests-per-minute", type=int)
    tenant.add_argument("--tokens-per-minute", type=int)
    tenant.add_argument("--max-upload-bytes", type=int)
    key = actions.add_parser("create-key", help="create a tenant key; prints it (shown once)")
    key.add_argument("tenant", help="the tenant's name or id")
    key.add_argument("--name", default="", help="a label for the key")


def run_admin(args: argparse.Namespace) -> int:
    from loraplex.adapters import migrate
    from loraplex.adapters.api_keys import create_api_key
    from loraplex.adapters.errors import ConflictError, NotFoundError
    from loraplex.adapters.tenants import create_tenant, get_tenant, get_tenant_by_name
    from loraplex.platform.db import create_db_engine, create_session_factory
    from loraplex.platform.settings import get_settings

    url = args.database_url or get_settings().database_url
    migrate.upgrade(url)
    engine = create_db_engine(url)
    try:
        with create_session_factory(engine)() as session:
            if args.action == "create-tenant":
                try:
                    tenant = create_tenant(
                        session=session,
                        name=args.name,
                        max_adapters=args.max_adapters,
                        requests_per_minute=args.requests_per_minute,
                        tokens_per_minute=args.tokens_per_minute,
                        max_upload_bytes=args.max_upload_bytes,
                    )
                except ConflictError as exc:
                    raise ValueError(str(exc)) from exc
                print(tenant.id)
                return 0
            try:
                if args.tenant.isdigit():
                    tenant = get_tenant(session=session, tenant_id=int(args.tenant))
                else:
                    tenant = get_tenant_by_name(session=session, name=args.tenant)
            except NotFoundError as exc:
                raise ValueError(str(exc)) from exc
            created = create_api_key(session=session, tenant_id=tenant.id, name=args.name)
            print(created.plaintext)
            return 0
    finally:
        engine.dispose()
