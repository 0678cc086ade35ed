"""Load a model folder into a ready worker: plan memory, read weights, build engine and tokenizer.

The memory plan is made from the folder's hyperparameters before any weights are read, so a model
that cannot fit is refused in a second with a message saying what would fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.engine import devices, memory, precision
from app.engine.engine import Engine, EngineConfig
from app.engine.programs import ProgramShelf
from app.keywords.model_spec import KeywordSpec, read_model_spec
from app.model.hparams import HParams
from app.model.loader import load_weights, read_hparams, resolve_model_dir
from app.tokenizer.load import Tokenizer, load_tokenizer


@dataclass
class LoadedModel:
    name: str
    path: Path
    hparams: HParams
    encoder: Tokenizer
    engine: Engine
    plan: memory.MemoryPlan
    keywords: KeywordSpec | None = None  # its keywords.json: keyword-conditioned, with these delimiters
    cache_dir: Path | None = None  # where start-up measurements (kernels, dtype) are kept
    dtype_reason: str = ""  # why this dtype (dtype="auto"): one line for /models and the log

    @property
    def device(self) -> str:
        return self.engine.config.device or "/CPU:0"


def load_model(
    name_or_path: str | Path,
    models_dir: str | Path = "model_store",
    *,
    device: str | None = None,
    dtype: str = "float32",
    slots: int | None = None,
    memory_limit: int | None = None,
    cache_dir: Path | None = None,
    shelf: ProgramShelf | None = None,
    **engine_options,
) -> LoadedModel:
    """``memory_limit`` (bytes) overrides what the device reports as free. Start-up measurements
        (``dtype="auto"``, ``kernels="auto"``) are kept in ``cache_dir / <model folder name>``, by
        default in a ``.gpt2-serve`` folder inside the model's folder. ``shelf``: compiled programs shared
    with the other engines of the same shape (:mod:`app.engine.programs`). ``engine_options``: the other
        fields of :class:`EngineConfig` (``prefill_chunk``, ``kernels``, ``batch_invariant``, ...)."""
    path = resolve_model_dir(name_or_path, models_dir)
    hp = read_hparams(path)
    device = devices.normalize(device) if device else devices.default_device(0)
    available = memory_limit if memory_limit is not None else devices.available_memory(device)
    cache = Path(cache_dir) / path.name if cache_dir is not None else path / ".gpt2-serve"
    slots = memory.startup_slots(hp, dtype=dtype, configured=slots, available=available)
    reason = f"dtype={dtype}"
    if dtype == "auto":
        dtype, reason = precision.auto_dtype(hp, slots=slots, on_gpu="GPU" in device.upper(), cache_dir=cache)
    plan = memory.plan(hp, slots=slots, dtype=dtype)
    if available is not None:
        memory.check_fits(plan, hp, available=available, where=f"{device} for {path.name}")
    encoder = load_tokenizer(path)
    if encoder.n_vocab != hp.n_vocab:
        raise ValueError(
            f"{path}: the tokenizer has {encoder.n_vocab} tokens but the model has n_vocab {hp.n_vocab}; "
            "they must be equal (init-model --tokenizer sizes a new model to its tokenizer)"
        )
    _, params = load_weights(path)
    config = EngineConfig(slots=slots, dtype=dtype, device=device, **engine_options)
    engine = Engine(hp, params, config, shelf=shelf)
    return LoadedModel(
        Path(name_or_path).name, path, hp, encoder, engine, plan, read_model_spec(path), cache, reason
    )
