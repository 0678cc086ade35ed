"""`gpt2-serve download SIZE`: fetch one of OpenAI's GPT-2 models into ``<models-dir>/<SIZE>/``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.model.download import DEFAULT_BASE_URL, DownloadError, download_model
from app.model.hparams import ALIASES, PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download an OpenAI GPT-2 model (resumable)",
        description="Fetch one of OpenAI's GPT-2 models into MODELS_DIR/SIZE/; interrupted downloads resume.",
    )
    parser.add_argument("size", metavar="SIZE", help=f"one of {', '.join([*PRESETS, *ALIASES])}")
    parser.add_argument("--models-dir", type=Path, default=Path("model_store"), help="default: model_store")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"default: {DEFAULT_BASE_URL}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        folder = download_model(
            args.size, args.models_dir, base_url=args.base_url, progress=not args.no_progress
        )
    except DownloadError as exc:
        print(f"gpt2-serve download: error: {exc}", file=sys.stderr)
        return 2
    print(f"GPT-2 {folder.name} is ready in {folder}")
    return 0
