"""`gpt2-serve` command line: one module per subcommand, each exposing ``register(subparsers)``.

A subcommand's ``register`` adds its parser and sets ``func=run`` where ``run(args) -> int``.
Errors meant for users (:class:`app.errors.ModelFileError`, ``ValueError`` from bad
arguments) are printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from app.engine.memory import InsufficientMemory
from app.errors import ModelFileError
from app.tokenizer.bundled import BundledFilesError

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = (
    "app.cli.generate_cmd",
    "app.cli.tokenize_cmd",
    "app.cli.tokenizer_cmd",
    "app.cli.download_cmd",
    "app.cli.init_model_cmd",
    "app.cli.serve_cmd",
    "app.cli.devices_cmd",
    "app.cli.plan_cmd",
    "app.cli.healthcheck_cmd",
    "app.cli.encode_cmd",
    "app.cli.train_cmd",
    "app.cli.export_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, XLA service) is not for CLI users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # One compiled function per shape bucket is the design; TensorFlow's "retracing" warning is noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ModelFileError, ValueError, FileNotFoundError, InsufficientMemory, BundledFilesError) as exc:
        print(f"gpt2-serve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
