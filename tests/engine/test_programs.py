"""Engines of one model shape share their compiled programs (app/engine/programs.py): a second
engine on the same shelf traces no program body again, yet computes with its own weights and cache
exactly what an engine with programs of its own computes; a server's models of one shape share."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from app.engine.engine import Engine, EngineConfig
from app.engine.programs import ProgramShelf
from app.model.formats.openai_tf import write_openai_model
from app.model.random_init import random_params
from app.tokenizer.load import gpt2_tokenizer_files
from tests.support.server_harness import TINY as HP
from tests.support.server_harness import live_server, tiny_settings

CONFIG = EngineConfig(slots=4, prefill_chunk=64)


def run(engine: Engine) -> list[np.ndarray]:
    """Prefills, decode steps of one and two rows and a move: every kind of program."""
    out = [engine.prefill(0, list(range(1, 21)))]
    out += [engine.step({0: 5}) for _ in range(3)]
    out.append(engine.prefill(1, list(range(30, 70))))
    out += [engine.step({0: 5, 1: 6}) for _ in range(3)]
    engine.move(1, 2)
    out.append(engine.step({0: 7, 2: 8}))
    return out


def traces(engine: Engine) -> int:
    return sum(f.experimental_get_tracing_count() for f in engine.programs.functions())


@pytest.mark.slow  # compiles every program twice
def test_a_second_engine_of_the_shape_reuses_the_programs_and_computes_with_its_own_weights():
    shelf = ProgramShelf()
    first = Engine(HP, random_params(HP, seed=1), CONFIG, shelf=shelf)
    first_out = run(first)
    traced = traces(first)
    assert traced > 0

    second = Engine(HP, random_params(HP, seed=2), CONFIG, shelf=shelf)
    assert second.programs is first.programs
    shared = run(second)
    assert traces(second) == traced  # nothing traced again, so nothing compiled again

    own = run(Engine(HP, random_params(HP, seed=2), CONFIG))  # the same weights, its own programs
    for a, b in zip(shared, own):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(shared[0], first_out[0])


def test_another_shape_or_jit_setting_gets_other_programs():
    shelf = ProgramShelf()
    other = type(HP)(**{**HP.__dict__, "n_layer": 1})
    assert shelf.get(HP, True) is shelf.get(HP, True)
    assert shelf.get(HP, True) is not shelf.get(other, True)
    assert shelf.get(HP, True) is not shelf.get(HP, False)


def test_a_servers_models_of_one_shape_share_their_programs(tmp_path, shelf):
    files = gpt2_tokenizer_files()
    base = write_openai_model(tmp_path / "base", HP, random_params(HP, seed=3), tokenizer=files)
    tuned = write_openai_model(tmp_path / "tuned", HP, random_params(HP, seed=4), tokenizer=files)
    with live_server(tiny_settings(base, models=[str(base), str(tuned)]), shelf=shelf) as server:
        entries = server.state.registry.entries
        assert entries["base"].worker.model.engine.programs is entries["tuned"].worker.model.engine.programs
        answers = [
            httpx.post(
                f"{server.url}/generate",
                json={
                    "inputs": "Hello",
                    "parameters": {"model": name, "max_new_tokens": 5, "do_sample": False},
                },
                timeout=60,
                trust_env=False,
            ).json()["generated_text"]
            for name in ("base", "tuned")
        ]
    assert answers[0] != answers[1]  # each with its own weights
