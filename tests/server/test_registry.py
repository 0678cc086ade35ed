"""The registry's loader thread against the event loop's readers (issue 21 §3).

The loader thread writes a model's state; the routes read it without a lock (``GET /models``
through :func:`describe`, every request through :func:`ready_worker`). Here the registry's own
loader (:meth:`Registry._load`, on a real model folder and on a missing one) fails and succeeds in
turn while four threads read, and every read must be whole: a failed model with its reason and no
worker, a ready one with its worker and no reason, a loading one with neither.

Left to the scheduler such a race is rarely caught (a half-written state lasts a few bytecodes:
a free-running version of this test caught a loader writing state and reason one after the other
in some runs only), so the threads are interleaved on purpose (:class:`Interleaving`): the loader
waits before each of its bytecodes until two readers have read again (every state its code leaves
between two instructions is read), and two more readers wait before each of theirs for the
loader's next one (a write falls between any two of their reads). ``sys.setswitchinterval(1e-6)``
interleaves the rest finely too.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import CodeType

from app.server import registry as registry_module
from app.server import validation as validation_module
from app.server.errors import APIError
from app.server.metrics import Metrics
from app.server.registry import ModelEntry, Registry, Status, describe
from app.server.settings import Settings
from app.server.validation import ready_worker

FAILURES = 3  # failed loads before and after the successful one


def describe_is_whole(entry: ModelEntry) -> str:
    out = describe(entry)
    state, has_reason, has_worker = out["state"], "reason" in out, "slots" in out
    whole = {"failed": has_reason and not has_worker, "ready": has_worker and not has_reason}
    assert whole.get(state, not has_reason and not has_worker), f"GET /models read half a status: {out}"
    return state


def ready_worker_is_whole(registry: Registry) -> str:
    name = registry.default.name
    refusals = {
        f"model {name} failed to load; GET /models gives the reason": "failed",
        f"model {name} is loading": "loading",
    }
    try:
        _, worker = ready_worker(registry, None)
    except APIError as exc:
        assert exc.message in refusals, f"a request read half a status: {exc.message}"
        return refusals[exc.message]
    assert worker is not None, "a request read half a status: ready without a worker"
    return "ready"


def each_opcode(watched: Callable[[CodeType], bool], action: Callable[[], None]):
    """A ``sys.settrace`` function that calls ``action()`` before each bytecode of ``watched`` code."""

    def local(frame, event, arg):
        if event == "opcode":
            action()
        return local

    def tracer(frame, event, arg):
        if not watched(frame.f_code):
            return None
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return local

    return tracer


class Interleaving:
    """The loader (:meth:`load`) and reader threads, interleaved by the bytecode.

    Before each bytecode of the registry's code the loader runs, it waits until every ``whole``
    reader has made a whole read (a ``whole`` reader reads once for each such pause, and every
    0.1 ms meanwhile). A ``stepping`` reader goes the other way: before each bytecode of the
    routes' code it runs (the registry's, the validation's), it waits for the loader's next
    bytecode, so the loader writes between any two of its reads. The first error stops them all.
    """

    def __init__(self, whole: dict[str, Callable[[], str]], stepping: dict[str, Callable[[], str]]):
        self.stop = threading.Event()
        self.seen: dict[str, set[str]] = {name: set() for name in [*whole, *stepping]}
        self.errors: list[BaseException] = []
        self.readers = [threading.Thread(target=self._read_whole, args=item) for item in whole.items()]
        self.readers += [threading.Thread(target=self._read_stepping, args=item) for item in stepping.items()]
        self._turn = threading.Condition()
        self._tick = 0  # the loader's bytecodes so far
        self._read_at = dict.fromkeys(whole, 0)  # the tick each whole reader last read at

    def load(self, loader: Callable[[], None]) -> None:
        """Run ``loader()`` in this thread, pausing before each bytecode of the registry's code."""
        self._guarded(lambda: _traced(each_opcode(loader_code, self._read_again), loader))

    def _read_whole(self, name: str, reader: Callable[[], str]) -> None:
        def loop() -> None:
            while not self.stop.is_set():
                with self._turn:
                    tick = self._tick
                self.seen[name].add(reader())
                with self._turn:
                    self._read_at[name] = tick
                    self._turn.notify_all()
                    self._wait_past(tick, timeout=1e-4)

        self._guarded(loop)

    def _read_stepping(self, name: str, reader: Callable[[], str]) -> None:
        def loop() -> None:
            while not self.stop.is_set():
                self.seen[name].add(reader())

        self._guarded(lambda: _traced(each_opcode(routes_code, self._next_tick), loop))

    def _read_again(self) -> None:
        with self._turn:
            self._tick += 1
            self._turn.notify_all()
            read = self._turn.wait_for(
                lambda: min(self._read_at.values()) == self._tick or self.stop.is_set(), timeout=10
            )
        assert read, "the readers stopped reading"

    def _next_tick(self) -> None:
        with self._turn:
            self._wait_past(self._tick, timeout=1e-3)

    def _wait_past(self, tick: int, timeout: float) -> None:
        """Wait (holding ``_turn``) until the loader's next bytecode after ``tick``, or ``timeout``."""
        self._turn.wait_for(lambda: self._tick > tick or self.stop.is_set(), timeout=timeout)

    def _guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - raised again by the test's thread
            self.errors.append(exc)
            self.stop.set()


def _traced(tracer, run: Callable[[], None]) -> None:
    sys.settrace(tracer)  # this thread only
    try:
        run()
    finally:
        sys.settrace(None)


def loader_code(code: CodeType) -> bool:
    """What the loader thread runs: the registry's code, and :func:`load_in_turn`."""
    return code.co_filename == registry_module.__file__ or code is load_in_turn.__code__


def routes_code(code: CodeType) -> bool:
    """What the readers run: the registry's code and the validation's."""
    return code.co_filename in (registry_module.__file__, validation_module.__file__)


def load_in_turn(registry: Registry, entry: ModelEntry, good: str, missing: str) -> None:
    for source in [missing] * FAILURES + [good] + [missing] * FAILURES:
        entry.source = source
        entry.status = Status()  # loading again (the registry itself loads a model once)
        registry._load(entry)
        if (worker := entry.worker) is not None:
            worker.stop()
            assert worker.join(10)


def test_readers_never_see_half_a_status(tiny_dirs, shelf, tmp_path, caplog):
    caplog.set_level(logging.CRITICAL, logger="gpt2serve.registry")
    missing = str(tmp_path / "missing")
    registry = Registry(Settings(models=[missing], warmup=False, slots=1, queue_size=1), Metrics(), shelf)
    entry = registry.default
    readers = {
        "describe": lambda: describe_is_whole(entry),
        "ready_worker": lambda: ready_worker_is_whole(registry),
    }
    race = Interleaving(whole=readers, stepping={f"{name}, stepping": r for name, r in readers.items()})
    loader = threading.Thread(
        target=race.load, args=(lambda: load_in_turn(registry, entry, str(tiny_dirs["openai"]), missing),)
    )
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in [*race.readers, loader]:
            thread.start()
        loader.join(120)
    finally:
        race.stop.set()
        sys.setswitchinterval(interval)
        for thread in race.readers:
            thread.join(10)
    if race.errors:
        raise race.errors[0]
    assert not loader.is_alive() and entry.state == "failed"  # the loader ran to its end
    assert all(race.seen[name] == {"loading", "failed", "ready"} for name in readers), race.seen
    assert all(race.seen[f"{name}, stepping"] for name in readers), race.seen
