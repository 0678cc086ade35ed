"""Faults injected from outside a real worker, nothing mocked: a method of one object (the worker's
batcher, its engine) replaced on that instance for the length of a ``with`` block, then restored.

    with wrapped_step(server.worker, gate):            # gate() runs at the start of every step
        ...
    with wrapped(engine, "step_scores", poison):       # engine.step_scores = poison(original)
        ...

:func:`wrapped_step` runs its hook where the worker runs a step: inside the worker's step, while
``busy_since`` is set (a hook that blocks is a stuck step for ``/health``), and what it raises fails
the requests of that step as a failed compute call does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.server.worker import ModelWorker


@contextmanager
def wrapped(obj: object, name: str, wrapper: Callable[[Callable], Callable]) -> Iterator[None]:
    """``obj.name`` is ``wrapper(original)`` on this instance inside the block; restored after."""
    own = vars(obj)
    had, before = name in own, own.get(name)
    setattr(obj, name, wrapper(getattr(obj, name)))
    try:
        yield
    finally:
        if had:
            setattr(obj, name, before)
        else:
            delattr(obj, name)  # the class's method again


def wrapped_step(worker: ModelWorker, hook: Callable[[], None]) -> AbstractContextManager[None]:
    """Inside the block, ``hook()`` runs at the start of each of the worker's steps (it may block,
    sleep or raise)."""

    def wrapper(step: Callable) -> Callable:
        def hooked():
            hook()
            return step()

        return hooked

    return wrapped(worker.batcher, "step", wrapper)


def raising(*errors: Exception | None) -> Callable[[], None]:
    """A step hook that raises ``errors[i]`` in the i-th step it sees (None: that step runs), then
    lets every step run."""
    pending = iter(errors)

    def hook() -> None:
        if (exc := next(pending, None)) is not None:
            raise exc

    return hook
