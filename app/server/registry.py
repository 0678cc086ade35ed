"""The configured models, their state (loading, ready, failed) and their workers.

Models load one after another in a background thread started by the app's lifespan, so the
server answers ``/health`` and reports ``loading`` while a big model is read. A model that fails
to load is ``failed`` with its reason; the others serve on.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.engine import batcher, devices, xla_cache
from app.engine.programs import ProgramShelf
from app.model.default_model import DEFAULT_NAME, resolve_default
from app.runtime.load import LoadedModel, load_model
from app.server.metrics import Metrics
from app.server.settings import Settings
from app.server.worker import ModelWorker
from app.tokenizer.load import describe_tokenizer

log = logging.getLogger("gpt2serve.registry")

State = Literal["loading", "ready", "failed"]


class UnknownModel(LookupError):
    pass


@dataclass(frozen=True)
class Status:
    """A model's state with what goes with it, replaced whole (never edited) by the loader thread,
    so the event loop, reading ``entry.status`` once, never sees a half-written one (a failed model
    without its reason, a ready one without its worker)."""

    state: State = "loading"
    reason: str | None = None  # why it failed
    worker: ModelWorker | None = None  # once ready
    loaded_at: float | None = None


@dataclass(eq=False)
class ModelEntry:
    name: str  # what clients use in `model`
    source: str  # as configured: a name in models_dir or a folder path
    device: str
    status: Status = field(default_factory=Status)
    created: int = field(default_factory=lambda: int(time.time()))

    # One field of the current status each; read ``status`` once for several that must agree.
    @property
    def state(self) -> State:
        return self.status.state

    @property
    def reason(self) -> str | None:
        return self.status.reason

    @property
    def worker(self) -> ModelWorker | None:
        return self.status.worker

    @property
    def model(self) -> LoadedModel | None:
        worker = self.status.worker
        return worker.model if worker else None


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics, shelf: ProgramShelf | None = None):
        self.settings = settings
        self.metrics = metrics
        # Models of one shape (a base and its fine-tunes) trace and compile their programs once.
        self._shelf = shelf or ProgramShelf()
        self.entries: dict[str, ModelEntry] = {}
        for i, (source, name) in enumerate(zip(settings.models, settings.model_names)):
            if name in self.entries:
                raise ValueError(f"model {name!r} is configured twice")
            where = settings.placement.get(name)
            device = devices.normalize(where) if where else devices.default_device(i)
            self.entries[name] = ModelEntry(name, source, device)
        self._loader: threading.Thread | None = None
        self._stopping = False  # stop_accepting was called: a model that finishes loading later stops too

    @property
    def default(self) -> ModelEntry:
        return next(iter(self.entries.values()))

    def get(self, name: str | None) -> ModelEntry:
        if name is None or name == "":
            return self.default
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownModel(f"unknown model {name!r}; served: {', '.join(self.entries)}") from None

    def ready(self) -> bool:
        return all(e.state == "ready" for e in self.entries.values())

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        for entry in self.entries.values():
            self._load(entry)

    def _load(self, entry: ModelEntry) -> None:
        s = self.settings
        try:
            source = resolve_default(s.models_dir) if entry.source == DEFAULT_NAME else entry.source
            spec = s.speculative_tokens if s.speculative == "ngram" else 0
            model = load_model(
                source,
                s.models_dir,
                device=entry.device,
                dtype=s.dtype,
                slots=s.slots,
                prefill_chunk=s.prefill_chunk,
                slide_chunk=s.slide_chunk,
                speculative_tokens=spec,
                layers_per_call=s.layers_per_call,
                kernels=s.kernels,
                cache_dir=s.cache_dir,
                batch_invariant=s.batch_invariant,
                whole_model_rows=s.whole_model_rows,
                shelf=self._shelf,
            )
            log.info("model %s: %s (%s)", entry.name, model.engine.config.dtype, model.dtype_reason)
            if s.warmup:
                started = time.monotonic()
                progress = functools.partial(_progress, entry.name)
                model.engine.choose_kernels(model.cache_dir, progress)
                _warmup(model.engine, progress)
                log.info("model %s: every shape compiled in %.1f s", entry.name, time.monotonic() - started)
            _freeze_heap()
            worker = ModelWorker(entry.name, model, queue_size=s.queue_size, metrics=self.metrics)
            worker.start()
        except Exception as exc:  # noqa: BLE001 - any failure marks this model failed, others go on
            entry.status = Status("failed", _reason(exc))
            log.error("model %s failed to load: %s", entry.name, entry.reason)
            return
        entry.status = Status("ready", worker=worker, loaded_at=time.time())
        if self._stopping:  # the server began shutting down while this model loaded
            worker.stop()
        log.info("model %s ready on %s (%d slots)", entry.name, entry.device, model.engine.slots)

    def stop_accepting(self) -> None:
        self._stopping = True
        for entry in self.entries.values():
            if entry.worker:
                entry.worker.stop()

    def join(self, timeout: float) -> bool:
        """Wait until every worker answered all it accepted; False if time ran out."""
        deadline = time.monotonic() + timeout
        ok = True
        for entry in self.entries.values():
            if entry.worker:
                ok &= entry.worker.join(max(0.0, deadline - time.monotonic()))
        return ok


def _warmup(engine, progress) -> None:
    """Compile every shape; with XLA's persistent cache, vouch for what it now holds, and when a
    program read from it fails, empty it and compile everything again (never a crash for a bad
    cache: :mod:`app.engine.xla_cache`)."""
    cache, shapes = xla_cache.active(), batcher.programs(engine)
    try:
        engine.warmup(shapes, progress)
    except Exception as exc:  # noqa: BLE001 - retried once without the cached programs
        if cache is None:
            raise
        log.warning(
            "warm-up failed with the XLA cache %s (%s); emptying it and compiling again", cache, _reason(exc)
        )
        xla_cache.wipe(cache)
        engine.warmup(shapes, progress)
    if cache is not None:
        xla_cache.seal(cache)


def _progress(name: str, line: str) -> None:
    log.info("model %s: %s", name, line)


def _freeze_heap() -> None:
    """Move every object alive now (TensorFlow's graphs, the weights' wrappers: hundreds of
    thousands) out of the garbage collector's reach. A full collection scanned them all and
    stalled every stream for 0.1-0.5 s at 124M while serving; requests' garbage is still
    collected (vLLM freezes its start-up heap the same way)."""
    gc.collect()
    gc.freeze()


def _reason(exc: BaseException) -> str:
    """One line for users: the error's own message, no traceback or memory addresses."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:500]


def describe(entry: ModelEntry) -> dict:
    """What ``GET /models`` says of one model."""
    status = entry.status  # once: the loader thread may replace it meanwhile
    out: dict = {"name": entry.name, "source": entry.source, "device": entry.device, "state": status.state}
    if status.reason:
        out["reason"] = status.reason
    worker = status.worker
    if worker is not None:
        model = worker.model
        out.update(
            path=str(Path(model.path)),
            hparams=model.hparams.__dict__,
            dtype=model.engine.config.dtype,
            dtype_reason=model.dtype_reason,
            kernels=model.engine.kernel_plan.as_dict(),
            slots={"busy": worker.active, "total": model.engine.slots},
            queue={"length": worker.queued, "capacity": worker.queue_size},
            memory_plan=model.plan.as_dict(),
            tokenizer=describe_tokenizer(model.encoder),
        )
        # A keyword-conditioned model's format; null for the others.
        out["keywords"] = model.keywords.as_dict() if model.keywords else None
    return out
