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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex", description="Multi-tenant multi-LoRA LLM serving."
    )
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_make_model(subcommands)
    _add_demo(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as exc:
        args.command_parser.error(str(exc))
