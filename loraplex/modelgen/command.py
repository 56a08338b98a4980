"""The `make-model` command line, shared by `loraplex make-model` and `python -m loraplex.modelgen`.

Only the standard library and the preset tables are imported here; torch and transformers load
when the command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loraplex.modelgen.presets import ARCHITECTURES, DTYPES, PRESETS

DESCRIPTION = (
    "Write a random-weight Hugging Face checkpoint of a real architecture (config, "
    "safetensors weights and a locally trained tokenizer with a chat template)."
)


def add_make_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=list(PRESETS), help="model shapes")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the model to")
    parser.add_argument(
        "--arch",
        choices=list(ARCHITECTURES),
        help="architecture (default: the preset's first, llama for the dense presets)",
    )
    parser.add_argument("--seed", default=0, type=_non_negative_int, help="default: 0")
    parser.add_argument(
        "--dtype", choices=DTYPES, help="weight dtype (default: float32 for tiny, else bfloat16)"
    )
    parser.add_argument(
        "--device", default="cpu", help="where to draw the random weights: cpu (default) or cuda"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite the model files in a non-empty --out"
    )


def run_make_model(args: argparse.Namespace) -> int:
    """Runs the command; bad arguments raise ValueError with a message for the user."""
    out: Path = args.out
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} is a non-empty folder; pass --force to overwrite it")
    from loraplex.modelgen.writer import make_model

    arch = args.arch or PRESETS[args.preset].architectures[0]
    make_model(
        args.preset,
        out,
        arch=arch,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        overwrite=args.force,
    )
    print(f"wrote {args.preset} {arch} model (seed {args.seed}) to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplex.modelgen", description=DESCRIPTION)
    add_make_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_make_model(args)
    except ValueError as exc:
        parser.error(str(exc))


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {value}")
    return value
