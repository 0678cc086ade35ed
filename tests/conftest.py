"""Shared fixtures (a tiny real GPT-2 with the real 50257-token vocabulary, in both on-disk layouts;
the bundled encoder) and the two test tiers.

Tiers: ``system`` tests run what a user's machine runs whole (server processes, training, the
browser, Prometheus, other subprocesses, export round-trips): everything under ``tests/system/``,
anything marked ``@pytest.mark.system``, and any test that starts a real server (in a thread or a
process), itself or through a fixture it uses. Every other test is ``unit`` and may start no
process: ``subprocess.Popen`` fails in it, saying to mark the test ``system``.

``slow`` marks, in either tier, a test that is heavy for its tier (many XLA compiles of engine
programs, the 124M shape, hypothesis through the app). ``make test-fast`` runs ``-m "unit and not
slow"`` (the edit loop, under 90 s); ``make test`` runs every test, slow ones included."""

from __future__ import annotations

import functools
import inspect
import os
import re
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from app.model.hparams import HParams  # noqa: E402
from app.model.random_init import random_params  # noqa: E402
from tests.support.server_harness import TINY  # noqa: E402

SYSTEM_DIR = os.path.join(os.path.dirname(__file__), "system")


# A test that starts one of these (itself or through any fixture it uses) runs a real server: system.
SERVER_STARTERS = re.compile(r"\b(running_server|live_server|threaded_server|serve_process|server_process)\(")


@functools.cache
def _starts_a_server(func) -> bool:
    try:
        return bool(SERVER_STARTERS.search(inspect.getsource(func)))
    except (OSError, TypeError):
        return False


def _uses_a_server(item) -> bool:
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        funcs += [d.func for d in defs]
    return any(f is not None and _starts_a_server(f) for f in funcs)


# The files that take longest (measured on 2 cores, longest first) run first: under pytest-xdist
# (the Makefile's --dist loadfile --no-loadscope-reorder: a worker takes the next file in this order
# when it runs short) the two workers then end together instead of one waiting for a heavy file
# taken last. Only the order of files changes; the others follow in their usual order.
SLOWEST_FIRST = (
    "keywords/test_learning.py",
    "system/test_soak.py",
    "engine/test_batching.py",
    "server/test_slow_readers.py",
    "cli/test_devices.py",
    "engine/test_engine.py",
    "server/test_serving.py",
    "train/test_trainer.py",
    "server/test_shutdown.py",
    "engine/test_xla_cache.py",
    "engine/test_batch_invariant.py",
    "server/test_validation.py",
    "server/test_auth.py",
    "train/test_export.py",
    "cli/test_generate.py",
    "system/test_playground.py",
    "server/test_contract.py",
    "system/test_prometheus_real.py",
    "engine/test_kernels.py",
)


def _file_rank(item) -> int:
    path = os.path.relpath(str(item.path), os.path.dirname(__file__)).replace(os.sep, "/")
    return SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=_file_rank)  # stable: a file's tests keep their order
    for item in items:
        if item.get_closest_marker("system"):
            continue
        if str(item.path).startswith(SYSTEM_DIR + os.sep) or _uses_a_server(item):
            item.add_marker(pytest.mark.system)
        if not item.get_closest_marker("system"):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch) -> None:
    if request.node.get_closest_marker("system"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid}: a unit test starts no process; mark it @pytest.mark.system "
            "(or move it to tests/system/)"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(scope="session")
def enc():
    """The bundled GPT-2 BPE encoder (the real vocabulary), built once."""
    from app.tokenizer.bpe import Encoder
    from app.tokenizer.bundled import bundled_bpe_files

    return Encoder.from_files(*bundled_bpe_files())


@pytest.fixture(scope="session")
def tiny_hp() -> HParams:
    return TINY


@pytest.fixture(scope="session")
def tiny_params() -> dict[str, np.ndarray]:
    # ln_noise: layer-norm gains/shifts and biases random too, so parity covers every weight.
    return random_params(TINY, seed=1, ln_noise=True)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_params) -> dict[str, object]:
    """The same tiny weights written as an OpenAI folder and as a Hugging Face folder."""
    from app.model.formats.hf import write_hf_model
    from app.model.formats.openai_tf import write_openai_model
    from app.tokenizer.load import gpt2_tokenizer_files

    gpt2 = gpt2_tokenizer_files()
    root = tmp_path_factory.mktemp("models")
    return {
        "openai": write_openai_model(root / "tiny-openai", TINY, tiny_params, tokenizer=gpt2),
        "hf": write_hf_model(root / "tiny-hf", TINY, tiny_params, tokenizer=gpt2),
    }


@pytest.fixture(scope="session")
def shelf():
    """Compiled programs shared by the engines this test process builds (app.engine.programs):
    each shape traces and compiles once per worker instead of once per engine."""
    from app.engine.programs import ProgramShelf

    return ProgramShelf()
