"""Memory plan: sizes of GPT-2's weights and KV cache, the refusal message (what would fit, and it
really does), default slot counts, and that ``load_model`` refuses before reading any weights."""

from __future__ import annotations

import re
from unittest import mock

import pytest

from app.engine import memory
from app.engine.memory import InsufficientMemory, check_fits, default_slots, max_slots, plan
from app.model.hparams import preset
from app.model.loader import load_weights
from app.runtime.load import load_model

GIB = 2**30


def test_124m_float32_sizes():
    hp = preset("124M")
    assert hp.n_params() == 124_439_808
    p = plan(hp, slots=1)
    assert p.weights_bytes == 124_439_808 * 4
    assert round(p.weights_bytes / 1e9, 2) == 0.50
    assert p.cache_bytes_per_slot == 12 * 2 * 1025 * 768 * 4
    assert 75e6 <= p.cache_bytes_per_slot < 76e6  # ≈ 75 MB per slot
    assert p.total_bytes == p.weights_bytes + p.cache_bytes_per_slot + p.overhead_bytes


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("size", ["124M", "355M", "774M", "1558M"])
def test_half_precision_halves_weights_and_cache(size, half):
    hp = preset(size)
    full, halved = plan(hp, slots=4, dtype="float32"), plan(hp, slots=4, dtype=half)
    assert halved.weights_bytes * 2 == full.weights_bytes
    assert halved.cache_bytes_per_slot * 2 == full.cache_bytes_per_slot
    assert halved.cache_bytes * 2 == full.cache_bytes


def test_plan_as_dict_has_the_totals():
    p = plan(preset("124M"), slots=3)
    d = p.as_dict()
    assert d["cache_bytes"] == 3 * p.cache_bytes_per_slot and d["total_bytes"] == p.total_bytes
    assert d["dtype"] == "float32" and d["slots"] == 3


def test_1558m_on_a_6gib_card_is_refused_with_what_would_fit():
    hp, available = preset("1558M"), 6 * GIB
    p = plan(hp, slots=8, dtype="float32")
    with pytest.raises(InsufficientMemory) as info:
        check_fits(p, hp, available=available, where="/GPU:0 for 1558M")
    msg = str(info.value)
    assert "\n" not in msg
    assert "/GPU:0" in msg and "1558M" in msg
    assert memory.gib(p.total_bytes) in msg and "GiB" in msg  # what it needs
    assert memory.gib(available) in msg  # what the device has
    suggestions = dict(re.findall(r"(float32|float16|bfloat16) with up to (\d+) slots?", msg))
    assert set(suggestions) == {"float16", "bfloat16"}  # float32 weights alone do not fit
    for dtype, count in suggestions.items():
        n = int(count)
        assert n >= 1
        assert plan(hp, slots=n, dtype=dtype).total_bytes <= available
        assert plan(hp, slots=n + 1, dtype=dtype).total_bytes > available
    assert max_slots(hp, dtype="float32", available=available) == 0


def test_check_fits_accepts_a_plan_that_fits_exactly():
    hp = preset("124M")
    p = plan(hp, slots=2)
    check_fits(p, hp, available=p.total_bytes, where="/CPU:0")
    with pytest.raises(InsufficientMemory):
        check_fits(p, hp, available=p.total_bytes - 1, where="/CPU:0")


def test_nothing_fits_says_so():
    hp = preset("124M")
    with pytest.raises(InsufficientMemory, match="no dtype fits even with one slot"):
        check_fits(plan(hp, slots=1), hp, available=10 * 2**20, where="/CPU:0")


@pytest.mark.parametrize("size", ["124M", "1558M"])
@pytest.mark.parametrize("available", [0, 1, 2 * GIB, 6 * GIB, 24 * GIB, 10**15])
def test_default_slots_bounds(size, available):
    hp = preset(size)
    n = default_slots(hp, dtype="float16", available=available)
    assert 1 <= n <= 32
    p = plan(hp, slots=n, dtype="float16")
    spare = available - plan(hp, slots=0, dtype="float16").total_bytes
    if n > 1:  # more than the minimum only when it uses at most half the memory left after the weights
        assert p.cache_bytes <= spare // 2
    if n < 32 and spare > 0:  # one more slot would go past that half
        assert (n + 1) * p.cache_bytes_per_slot > spare // 2


def test_default_slots_cap():
    hp = preset("124M")
    assert default_slots(hp, dtype="float32", available=10**15) == 32
    assert default_slots(hp, dtype="float32", available=10**15, cap=5) == 5
    assert default_slots(hp, dtype="float32", available=0) == 1


@pytest.mark.parametrize("layout", ["openai", "hf"])
def test_load_model_refuses_before_reading_weights(tiny_dirs, layout):
    path = tiny_dirs[layout]
    with mock.patch("app.runtime.load.load_weights", wraps=load_weights) as spy:
        with pytest.raises(InsufficientMemory) as info:
            load_model(path, memory_limit=1_000_000)
        assert spy.call_count == 0
    msg = str(info.value)
    assert "/CPU:0" in msg and path.name in msg and "no dtype fits" in msg


def test_load_model_with_enough_memory_reads_weights_once(tiny_dirs, tiny_hp):
    # The spy's positive control: the same path with room to spare does read the weights.
    with mock.patch("app.runtime.load.load_weights", wraps=load_weights) as spy:
        model = load_model(tiny_dirs["openai"], memory_limit=4 * GIB, slots=2)
        assert spy.call_count == 1
    assert model.hparams == tiny_hp
    assert model.plan == plan(tiny_hp, slots=2)
    assert model.engine.slots == 2 and model.device == "/CPU:0"
