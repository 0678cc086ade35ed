"""The test harness: real servers (no mocks), the shared test model shapes, SSE parsing, error
message checks, for tests/ (bench/ uses :mod:`app.client` directly).

A server in this process (uvicorn in a daemon thread; one per test module keeps the suite fast)::

    from tests.support.server_harness import running_server, tiny_settings

    @pytest.fixture(scope="module")
    def base_url(tiny_dirs):
        with running_server(tiny_settings(tiny_dirs["openai"])) as url:
            yield url  # "http://127.0.0.1:<port>"; WebSockets at url.replace("http", "ws", 1)

``running_server`` binds a free port itself (no race between picking and binding), starts
``uvicorn.Server`` in a daemon thread, waits until ``GET /ready`` answers 200 (models loaded),
and on exit sets ``should_exit`` (uvicorn closes open WebSockets, the lifespan drains) and joins the
thread. ``live_server`` yields a :class:`LiveServer` instead, which keeps a handle on the app, e.g.
to reach ``app.state.server`` (the :class:`~app.server.state.ServerState`) from the test;
:func:`threaded_server` is the same with the uvicorn server object and its thread in hand (another
server class, another readiness rule).

A server in a child process (``gpt2-serve serve``, or any HTTP server: :func:`server_process`, from
:mod:`app.client.process`)::

    with serve_process(model_dir, "--no-warmup", "--slots", "2") as srv:
        httpx.get(f"{srv.url}/models")  # srv.proc is the Popen; the process is stopped on exit

``wait_ready`` is the one readiness loop of all of them. ``metric`` and ``wait_for_metric`` read
``GET /metrics`` (Prometheus text); ``wait_until`` polls any condition. ``sse_events`` parses Server-Sent Events (``sse_frames`` also
checks their framing), ``check_message`` checks a client-facing error message.

The app (and TensorFlow) is imported only by what starts an app in this process.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.client.process import (  # noqa: F401  (the harness's names for tests)
    READY,
    ServerProcess,
    free_port,
    ready_200,
    serve_argv,
    serve_process,
    server_process,
    wait_ready,
)
from app.client.sse import DONE, sse_data, sse_event, sse_events, sse_payloads  # noqa: F401
from app.model.hparams import HParams

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from app.engine.programs import ProgramShelf
    from app.server.settings import Settings
    from app.server.state import ServerState
    from app.server.worker import ModelWorker

ROOT = Path(__file__).resolve().parents[2]

# ---- the test models' shapes and data ----

TINY = HParams(n_vocab=50257, n_ctx=128, n_embd=64, n_head=4, n_layer=2)  # tests/conftest.py's tiny model
TRAIN_HP = HParams(
    n_vocab=50257, n_ctx=32, n_embd=32, n_head=2, n_layer=2
)  # fine-tuning tests: smaller still
STORY = (
    "The king rode out at dawn with his knights, and the people of the town came to the gate to see "
    "them go. The queen stood upon the wall and watched until the last banner was gone from the hill. "
    "Then she turned to her maid and said that the summer would be long, and the harvest poor, and "
    "that they must keep the granary shut until the king came home again. "
) * 12  # a training text: repetitive enough that a few steps visibly learn it


# ---- client-facing error messages ----

LEAKS = re.compile(r'Traceback|File "|/work|/tmp|\.py|0x[0-9a-f]{6,}')


def check_message(message: object, expected: str | None = None) -> None:
    """An error message a client sees: a non-empty string under 300 characters that shows no
    traceback, file path or memory address; with ``expected``, exactly that."""
    assert isinstance(message, str) and 0 < len(message) < 300, message
    assert not LEAKS.search(message), f"message leaks internals: {message!r}"
    if expected is not None:
        assert message == expected, message


# ---- Server-Sent Events (app.client.sse) and a server in a child process (app.client.process) ----


def sse_frames(body: str, *, done: bool = False) -> list[dict]:
    """The JSON events of a whole SSE body, checking its framing on the way: every event one line
    ``data: {...}`` (both families write it so) ended by a blank line, and with ``done`` a last
    event ``data: [DONE]``, so the body ends exactly with ``data: [DONE]\n\n``."""
    prefix = "data: "
    frames = body.split("\n\n")
    assert len(frames) > 1 and frames[-1] == "", f"an SSE body ends with a blank line: {body[-200:]!r}"
    frames = frames[:-1]
    if done:
        assert frames[-1] == f"data: {DONE}", f"the last event is not data: [DONE]: {body[-200:]!r}"
        frames = frames[:-1]
    for frame in frames:
        assert frame.startswith(prefix + "{") and "\n" not in frame, (
            f"not one {prefix!r} line of a JSON object: {frame!r}"
        )
    return [json.loads(frame[len(prefix) :]) for frame in frames]


# ---- a server in this process ----


@dataclass
class ThreadedServer:
    """A uvicorn server running in a thread of this process."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def threaded_server(
    app: FastAPI,
    *,
    server_class: Callable[[uvicorn.Config], uvicorn.Server] | None = None,
    ready: Callable[[httpx.Client], bool | str] = READY,
    ready_timeout: float = 120.0,
    log_level: str = "warning",
    graceful_timeout: float = 10,
    send_buffer: int | None = None,
) -> Iterator[ThreadedServer]:
    """Serve ``app`` on a free port in a daemon thread (``server_class(config)``, default
    ``uvicorn.Server``); yield once ``ready`` holds. On exit: ``should_exit``, join the thread.

    ``send_buffer`` sets SO_SNDBUF of the listening socket, which accepted connections inherit
    (no kernel autotuning): a client that stops reading then backs up into the server in kilobytes
    rather than megabytes."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=graceful_timeout
    )
    server = (server_class or uvicorn.Server)(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    live = ThreadedServer(f"http://127.0.0.1:{port}", server, thread)
    try:
        with httpx.Client(base_url=live.url, timeout=5.0, trust_env=False) as client:
            wait_ready(
                client,
                timeout=ready_timeout,
                ready=ready,
                stopped=lambda: None if thread.is_alive() else "its thread ended (see the log above)",
            )
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@contextmanager
def running_server(
    settings: Settings, *, app: FastAPI | None = None, shelf: ProgramShelf | None = None, **options: Any
) -> Iterator[str]:
    """Serve ``app`` (default: ``create_app(settings, shelf=shelf)``) on a free port; yield its base
    URL once ready. ``shelf``: compiled programs shared with the test process's other engines
    (tests/conftest.py's ``shelf``). ``options``: those of :func:`threaded_server`."""
    if app is None:
        from app.server.app import create_app

        app = create_app(settings, shelf=shelf)
    with threaded_server(app, **options) as live:
        yield live.url


@dataclass
class LiveServer:
    """A running test server and its app object: URLs, server state, the served model's worker, metrics."""

    url: str
    app: FastAPI
    model: str = "tiny-openai"  # the folder name of tests/conftest.py's tiny_dirs["openai"]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/stream"

    @property
    def state(self) -> ServerState:
        return self.app.state.server

    @property
    def worker(self) -> ModelWorker:
        return self.state.registry.entries[self.model].worker

    def count(self, name: str, **labels: str) -> float:
        """A metric sample of this model (0 when absent)."""
        return metric(self.url, name, model=self.model, **labels) or 0.0


@contextmanager
def live_server(
    settings: Settings, *, shelf: ProgramShelf | None = None, **options: Any
) -> Iterator[LiveServer]:
    """:func:`running_server` of ``create_app(settings, shelf=shelf)``, as a :class:`LiveServer` (the
    app in hand)."""
    from app.server.app import create_app

    app = create_app(settings, shelf=shelf)
    with running_server(settings, app=app, **options) as url:
        yield LiveServer(url, app)


def tiny_settings(model_dir: str | Path, **overrides) -> Settings:
    """Settings for one tiny test model: no warm-up, 4 slots, a small queue, a short drain."""
    from app.server.settings import Settings

    values = dict(models=[str(model_dir)], warmup=False, slots=4, queue_size=2, drain_timeout=5.0)
    values.update(overrides)
    return Settings(**values)


# ---- metrics ----


def metric(base_url: str, name: str, **labels: str) -> float | None:
    """The value of one sample of ``GET /metrics`` (``name`` as exposed, e.g. ``gpt2_active_slots``
    or ``gpt2_cancelled_requests_total``), or None when absent."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def wait_for_metric(base_url: str, name: str, value: float, *, timeout: float = 10.0, **labels: str) -> None:
    """Poll ``/metrics`` until the sample equals ``value``; AssertionError with the last value if not."""
    deadline = time.monotonic() + timeout
    while True:
        seen = metric(base_url, name, **labels)
        if seen == value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} is {seen}, expected {value} within {timeout} s")
        time.sleep(0.02)
