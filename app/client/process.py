"""``gpt2-serve serve`` (or any HTTP server) in a child process: start it, wait until ``GET
/ready`` answers 200, stop it with SIGTERM (then SIGKILL). Used by the system tests, the benchmarks
and the soak; it imports neither the app nor TensorFlow.

    with serve_process(model_dir, "--no-warmup", "--slots", "2") as srv:
        httpx.get(f"{srv.url}/models")  # srv.proc is the Popen; the process is stopped on exit
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a child process to bind: it may be taken meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_200(path: str = "/ready") -> Callable[[httpx.Client], bool | str]:
    """The usual readiness rule: ``GET path`` answers 200."""

    def probe(client: httpx.Client) -> bool | str:
        r = client.get(path)
        return r.status_code == 200 or f"{r.status_code} {r.text[:300]}"

    return probe


READY = ready_200("/ready")


def wait_ready(
    client: httpx.Client,
    *,
    timeout: float,
    ready: Callable[[httpx.Client], bool | str] = READY,
    stopped: Callable[[], str | None] = lambda: None,
    poll: float = 0.05,
) -> None:
    """Poll ``ready(client)`` until it returns True (anything else is what was seen, for the error);
    a transport error counts as not ready yet. ``stopped()`` says why the server is gone (None while
    it runs): RuntimeError at once. TimeoutError with the last answer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = "no answer"
    while True:
        if (why := stopped()) is not None:
            raise RuntimeError(f"the server stopped while starting: {why}")
        try:
            last = ready(client)
            if last is True:
                return
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not ready after {timeout:.0f} s: {last}")
        time.sleep(poll)


@dataclass
class ServerProcess:
    """A server running as a child process on 127.0.0.1:``port``."""

    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"


@contextmanager
def server_process(
    argv: list[str],
    *,
    port: int,
    env: dict[str, str] | None = None,
    cwd: str | Path = ROOT,
    ready: Callable[[httpx.Client], bool | str] = READY,
    ready_timeout: float = 180.0,
    poll: float = 0.2,
    log: Path | None = None,
    stop_timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """Start ``argv`` (a server that listens on ``port``), yield once ``ready`` holds.

    ``env`` is the whole environment (default: this one with TensorFlow's C++ log quiet). With
    ``log``, the process's stderr goes to that file (stdout is discarded) and its tail is quoted
    when the server stops while starting. On exit a process still running gets SIGTERM, then
    SIGKILL after ``stop_timeout`` seconds (then ``subprocess.TimeoutExpired`` is raised, unless the
    block is already raising); ``proc.returncode`` is then its exit status."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"} if env is None else env
    if log is None:
        proc = subprocess.Popen(argv, cwd=cwd, env=env)
    else:
        with open(log, "w") as log_file:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log_file)

    def stopped() -> str | None:
        if proc.poll() is None:
            return None
        tail = f"\n{Path(log).read_text()[-3000:]}" if log is not None else " (see the log above)"
        return f"exit status {proc.returncode}{tail}"

    try:
        srv = ServerProcess(proc, port)
        with httpx.Client(base_url=srv.url, timeout=5.0, trust_env=False) as client:
            wait_ready(client, timeout=ready_timeout, ready=ready, stopped=stopped, poll=poll)
        yield srv
    except BaseException:
        _stop(proc, stop_timeout, strict=False)  # the block's own error is the one to see
        raise
    else:
        _stop(proc, stop_timeout, strict=True)


def _stop(proc: subprocess.Popen, timeout: float, *, strict: bool) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        if strict:
            raise


def serve_argv(models: str | Path, port: int, *flags: str) -> list[str]:
    """``gpt2-serve serve`` (this Python, this checkout) for ``models`` on ``port``; ``flags`` last."""
    return [
        sys.executable,
        "-m",
        "app.cli.main",
        "serve",
        "--models",
        str(models),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *flags,
    ]


@contextmanager
def serve_process(models: str | Path, *flags: str, **options: Any) -> Iterator[ServerProcess]:
    """``gpt2-serve serve --models models *flags`` in a child process on a free port, once ready
    (``GET /ready`` 200). ``options``: those of :func:`server_process`."""
    port = free_port()
    with server_process(serve_argv(models, port, *flags), port=port, **options) as srv:
        yield srv
