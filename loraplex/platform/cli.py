"""The `loraplex` command line.

Each subcommand registers its arguments and a handler; a handler imports what it needs when it
runs, so `loraplex --help` and every subcommand start without loading torch or the web stack.
A handler returns the exit status; a ValueError it raises is a usage error, reported as
`loraplex COMMAND: error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _add_make_model(subcommands: argparse._SubParsersAction) -> None:
    from loraplex.modelgen.command import (
        DESCRIPTION,
        add_make_model_arguments,
        run_make_model,
    )

    parser = subcommands.add_parser(
        "make-model", help="write a random-weight test model", description=DESCRIPTION
    )
    add_make_model_arguments(parser)
    parser.set_defaults(handler=run_make_model, command_parser=parser)


def _add_demo(subcommands: argparse._SubParsersAction) -> None:
    from loraplex.platform.demo import add_demo_arguments, run_demo

    parser = subcommands.add_parser("demo", help="generate offline with a locally made model")
    add_demo_arguments(parser)
    parser.set_defaults(handler=run_demo, command_parser=parser)


def _run_db(args: argparse.Namespace) -> int:
    from loraplex.adapters import migrate
    from loraplex.platform.settings import get_settings

    url = args.database_url or get_settings().database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    else:
        migrate.downgrade(url, args.revision or "base")
    print(f"database at revision {migrate.current_revision(url)}")
    return 0


def _add_db(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("db", help="apply or undo database migrations")
    parser.add_argument("action", choices=["upgrade", "downgrade"])
    parser.add_argument("revision", nargs="?", help="target (default: head / base)")
    parser.add_argument("--database-url", help="default: LORAPLEX_DATABASE_URL or the embedded one")
    parser.set_defaults(handler=_run_db, command_parser=parser)


def _add_serve(subcommands: argparse._SubParsersAction) -> None:
    from loraplex.platform.serve import add_serve_arguments, run_serve

    parser = subcommands.add_parser(
        "serve", help="run the API server (embedded defaults: SQLite, local store, tiny model)"
    )
    add_serve_arguments(parser)
    parser.set_defaults(handler=run_serve, command_parser=parser)


def _add_admin(subcommands: argparse._SubParsersAction) -> None:
    from loraplex.platform.admin_cli import add_admin_arguments, run_admin

    parser = subcommands.add_parser("admin", help="create tenants and keys from scripts")
    add_admin_arguments(parser)
    parser.set_defaults(handler=run_admin, command_parser=parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex", description="Multi-tenant multi-LoRA LLM serving."
    )
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_make_model(subcommands)
    _add_demo(subcommands)
    _add_db(subcommands)
    _add_serve(subcommands)
    _add_admin(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as exc:
        args.command_parser.error(str(exc))
