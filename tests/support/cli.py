"""``gpt2-serve`` run in this process by tests: exit status, stdout and stderr."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

from app.cli.main import main


def cli(args: list[str]) -> tuple[int, str, str]:
    """``gpt2-serve ARGS`` in this process: exit status, stdout, stderr. (Not capsys: with uvicorn
    started inside a capsys test, pytest's own capture failed at teardown, "I/O operation on closed
    file", when this file ran alone; uvicorn's logging setup runs while capsys's stream is sys.stderr.)"""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()
