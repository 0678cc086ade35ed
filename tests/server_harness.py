"""A real server for tests: uvicorn on 127.0.0.1 in a background thread, no mocks.

Use it from any test module (one server per module keeps the suite fast)::

    from tests.server_harness import running_server, tiny_settings

    @pytest.fixture(scope="module")
    def base_url(tiny_dirs):
        with running_server(tiny_settings(tiny_dirs["openai"])) as url:
            yield url  # "http://127.0.0.1:<port>"; WebSockets at url.replace("http", "ws", 1)

``running_server`` binds a free port itself (no race between picking and binding), starts
``uvicorn.Server`` in a daemon thread, waits until ``GET /ready`` answers 200 (models loaded),
and on exit sets ``should_exit`` (uvicorn closes open WebSockets, the lifespan drains) and joins the
thread. Pass ``app=create_app(settings)`` to keep a handle on the app, e.g. to reach
``app.state.server`` (the :class:`~app.server.state.ServerState`) from the test.

``metric`` and ``wait_for_metric`` read ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app.server.app import create_app
from app.server.settings import Settings
from app.server.state import ServerState
from app.server.worker import ModelWorker


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


def tiny_settings(model_dir: str | Path, **overrides) -> Settings:
    """Settings for one tiny test model: no warm-up, 4 slots, a small queue, a short drain."""
    values = dict(models=[str(model_dir)], warmup=False, slots=4, queue_size=2, drain_timeout=5.0)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_server(settings: Settings, *, app: FastAPI | None = None, ready_timeout: float = 120.0,
                   log_level: str = "warning", send_buffer: int | None = None) -> Iterator[str]:  # fmt: skip
    """Serve ``app`` (default: ``create_app(settings)``) on a free port; yield its base URL once ready.

    ``send_buffer`` sets SO_SNDBUF of the listening socket, which accepted connections inherit
    (no kernel autotuning): a client that stops reading then backs up into the server in kilobytes
    rather than megabytes."""
    app = app or create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, thread, ready_timeout)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def _wait_ready(base_url: str, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError("the test server stopped while starting (see the log above)")
            try:
                r = client.get("/ready")
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.05)
    raise TimeoutError(f"test server not ready after {timeout:.0f} s: {last}")


def metric(base_url: str, name: str, **labels: str) -> float | None:
    """The value of one sample of ``GET /metrics`` (``name`` as exposed, e.g. ``gpt2_active_slots``
    or ``gpt2_cancelled_requests_total``), or None when absent."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0, trust_env=False).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


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
