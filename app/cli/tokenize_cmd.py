"""`gpt2-serve tokenize --model M`: text on stdin -> GPT-2 token ids as a JSON list (``--decode``: back).

Stdin is read as UTF-8 bytes, unchanged (a trailing newline is a token too: ``printf`` rather than
``echo`` for exact input). ``--decode`` writes the text without adding a newline, so
``tokenize | tokenize --decode`` gives back the input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.model.loader import resolve_model_dir
from app.tokenizer.load import load_tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="text -> GPT-2 token ids (or back with --decode)",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    parser.add_argument("--model", required=True, help="a model name in --models-dir, or a model folder")
    parser.add_argument("--models-dir", type=Path, default=Path("model_store"), help="default: model_store")
    parser.add_argument("--decode", action="store_true", help="read a JSON list of ids, print the text")
    parser.set_defaults(func=run)


def read_stdin() -> str:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a replaced stdin (tests): already text
        return sys.stdin.read()
    return buffer.read().decode("utf-8")  # UnicodeDecodeError is a ValueError: one-line error


def write_stdout(text: str) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
    else:  # UTF-8 whatever the locale, and no newline translation
        sys.stdout.flush()
        buffer.write(text.encode("utf-8"))
        buffer.flush()


def parse_ids(raw: str) -> list[int]:
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"stdin is not valid JSON ({exc.msg}); expected a list of token ids") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("expected a JSON list of integer token ids on stdin")
    return ids


def run(args: argparse.Namespace) -> int:
    encoder = load_tokenizer(resolve_model_dir(args.model, args.models_dir))
    if args.decode:
        write_stdout(encoder.decode(parse_ids(read_stdin())))
    else:
        write_stdout(json.dumps(encoder.encode(read_stdin())) + "\n")
    return 0
