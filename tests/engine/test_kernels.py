"""Each machine runs its fastest kernels (issue 18 §3): the oneDNN variant computes what the XLA one
does, ``auto`` times both per row class and keeps the faster, and the choice is kept next to the
model so that the next start does not measure again."""

from __future__ import annotations

import json
import logging
from unittest import mock

import numpy as np
import pytest

from app.engine import kernels, precision
from app.engine.batcher import generate, programs
from app.engine.engine import Engine, EngineConfig
from app.engine.sampling import SamplingParams
from app.engine.spec import GenerationSpec
from app.model.random_init import random_params
from tests.support.server_harness import TINY as HP


@pytest.fixture(scope="module")
def params():
    return random_params(HP, seed=41, ln_noise=True)


def ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, HP.n_vocab, size=n).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 4])
def test_the_onednn_variant_scores_what_the_xla_variant_scores(params, slots):
    xla = Engine(HP, params, EngineConfig(slots=slots, kernels="xla"))
    onednn = Engine(HP, params, EngineConfig(slots=slots, kernels="onednn"))
    assert (xla.kernel_plan.fixed, onednn.kernel_plan.fixed) == ("xla", "onednn")
    for slot in range(slots):
        prompt = ids(20 + slot, seed=slot)
        np.testing.assert_allclose(onednn.prefill(slot, prompt), xla.prefill(slot, prompt), atol=2e-5, rtol=0)
    step = {slot: 11 + slot for slot in range(slots)}
    a, b = onednn.step_scores(step), xla.step_scores(step)
    np.testing.assert_allclose(a.logits, b.logits, atol=2e-5, rtol=0)
    np.testing.assert_allclose(a.lse, b.lse, atol=2e-5, rtol=0)
    # Each ran its own programs: oneDNN's compiled only attention, XLA's whole blocks.
    assert onednn.programs.decode_layers.experimental_get_tracing_count() == 0
    assert onednn.programs.decode_attention.experimental_get_tracing_count() > 0
    assert xla.programs.decode_attention.experimental_get_tracing_count() == 0


@pytest.mark.slow
def test_greedy_tokens_are_the_same_under_either_variant(params, shelf):
    def run(variant):
        engine = Engine(HP, params, EngineConfig(slots=2, kernels=variant), shelf=shelf)
        seqs = [
            GenerationSpec(ids(9, seed=s), 24, SamplingParams(temperature=0), stop_at_eos=False)
            for s in (5, 6)
        ]
        return [s.generated for s in generate(engine, seqs, eos_id=None)]

    assert run("onednn") == run("xla")


def test_a_call_takes_the_variant_of_its_row_class():
    plan = kernels.KernelPlan(decode={1: "xla", 4: "onednn"}, prefill={16: "onednn", 64: "xla"}, fixed=None)
    assert [plan.variant("decode", r) for r in (1, 2, 3, 4, 9)] == [
        "xla",
        "onednn",
        "onednn",
        "onednn",
        "onednn",
    ]
    assert [plan.variant("prefill", r) for r in (5, 16, 17, 64, 512)] == [
        "onednn",
        "onednn",
        "xla",
        "xla",
        "xla",
    ]
    assert kernels.fixed("onednn", "why").variant("decode", 7) == "onednn"
    with pytest.raises(ValueError, match="kernels must be one of"):
        kernels.fixed("mkl", "why")
    with pytest.raises(ValueError, match="kernels must be one of"):
        EngineConfig(kernels="mkl")


@pytest.mark.slow
def test_auto_keeps_per_class_the_variant_that_timed_faster_and_the_next_start_reads_it(
    params, tmp_path, shelf
):
    config = EngineConfig(slots=2, prefill_chunk=32, kernels="auto")
    engine = Engine(HP, params, config, shelf=shelf)
    assert engine.kernel_plan.fixed == "xla"  # until measured
    lines: list[str] = []
    plan = engine.choose_kernels(tmp_path, lines.append, repeats=2)
    assert plan.fixed is None and engine.kernel_plan is plan
    assert sorted(plan.decode) == list(engine.batch_buckets) and sorted(plan.prefill) == list(
        engine.chunk_buckets
    )
    for kind in kernels.KINDS:
        for rows, t in plan.timings[kind].items():
            faster = "onednn" if t["onednn"] < t["xla"] * (1 - kernels.MARGIN) else "xla"
            assert getattr(plan, kind)[rows] == faster
    assert lines and lines[0].startswith("kernels: decode 1:") and "measured at this start" in lines[0]
    (stored,) = tmp_path.glob("kernels-*.json")
    assert json.loads(stored.read_text())["key"]["dtype"] == "float32"

    again = Engine(HP, params, config, shelf=shelf)
    with mock.patch.object(again, "time_kernels", side_effect=AssertionError("measured again")):
        kept = again.choose_kernels(tmp_path)
    assert (kept.decode, kept.prefill) == (plan.decode, plan.prefill)
    assert str(stored) in kept.reason


@pytest.mark.slow
def test_a_corrupt_or_foreign_plan_file_is_ignored_with_a_warning(params, tmp_path, caplog, shelf):
    engine = Engine(HP, params, EngineConfig(slots=1, prefill_chunk=16, kernels="auto"), shelf=shelf)
    path = kernels.cache_file(tmp_path, engine.kernel_key())
    for content in ("{not json", json.dumps({"key": {"cpu": "another"}, "plan": {}})):
        path.write_text(content)
        engine = Engine(HP, params, EngineConfig(slots=1, prefill_chunk=16, kernels="auto"), shelf=shelf)
        with caplog.at_level(logging.WARNING, logger="app.engine.kernels"):
            plan = engine.choose_kernels(tmp_path, repeats=1)
        assert plan.fixed is None and "measured at this start" in plan.reason
        assert f"ignoring the kernel plan in {path}" in caplog.text
        caplog.clear()
    assert json.loads(path.read_text())["key"] == json.loads(json.dumps(engine.kernel_key()))


@pytest.mark.slow
def test_a_folder_that_cannot_be_written_only_costs_the_next_start_a_measurement(
    params, tmp_path, caplog, shelf
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    engine = Engine(HP, params, EngineConfig(slots=1, prefill_chunk=16, kernels="auto"), shelf=shelf)
    with caplog.at_level(logging.WARNING, logger="app.engine.kernels"):
        plan = engine.choose_kernels(blocker / "cache", repeats=1)
    assert plan.fixed is None and "cannot keep the kernel plan" in caplog.text


@pytest.mark.slow
def test_after_warmup_under_a_mixed_plan_no_request_compiles(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=4, prefill_chunk=32), shelf=shelf)
    engine.kernel_plan = kernels.KernelPlan(
        decode={1: "xla", 2: "onednn", 4: "xla"}, prefill={16: "onednn", 32: "xla"}, fixed=None
    )
    engine.warmup(programs(engine))
    traced = engine.trace_count()
    lengths = [3, 17, 40, 9, 30]
    seqs = [GenerationSpec(ids(n, seed=n), 6, SamplingParams(temperature=0.8, seed=n)) for n in lengths]
    generate(engine, seqs, eos_id=None)
    assert engine.trace_count() == traced


def test_half_precision_weights_on_the_cpu_take_onednn(params, shelf):
    engine = Engine(HP, params, EngineConfig(slots=1, dtype="bfloat16", kernels="auto"), shelf=shelf)
    assert engine.kernel_plan.fixed == "onednn" and "bfloat16" in engine.kernel_plan.reason
    assert engine.choose_kernels(None) is engine.kernel_plan  # nothing to measure


def test_cpu_info_reads_the_model_and_the_flags_that_matter(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
        "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile sse4_2\n"
    )
    model, flags = kernels.cpu_info(cpuinfo)
    assert model == "Intel(R) Xeon(R) Platinum 8481C"
    assert flags == ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    assert kernels.bf16_native(flags) and not kernels.bf16_native(("avx2",))
    assert kernels.cpu_info(tmp_path / "missing") == ("?", ())
    assert (
        kernels.cpu_summary(cpuinfo)
        == "Intel(R) Xeon(R) Platinum 8481C; flags: amx_bf16 amx_tile avx512_bf16 avx512f"
    )
    assert kernels.cpu_summary(tmp_path / "missing") == "?; flags: no avx512/amx"


def test_auto_dtype_picks_bfloat16_only_when_faster_with_many_rows_and_not_slower_alone():
    def t(b1, b32):
        return {1: {"float32": 10.0, "bfloat16": b1}, 32: {"float32": 60.0, "bfloat16": b32}}

    assert precision.decide(t(10.2, 30.0))[0] == "bfloat16"
    assert precision.decide(t(11.0, 30.0))[0] == "float32"  # 10 % slower for a lone stream
    assert precision.decide(t(9.0, 58.0))[0] == "float32"  # under 5 % faster at 32 rows
    assert precision.decide(t(10.2, 30.0))[1] == (
        "auto: bfloat16 measured 1 rows 1.02x the time of float32, 32 rows 0.50x the time of float32"
    )


def test_auto_dtype_keeps_float32_without_measuring_where_bfloat16_is_emulated(tmp_path):
    with mock.patch.object(precision, "time_matmuls", side_effect=AssertionError("measured")):
        dtype, why = precision.auto_dtype(HP, slots=2, on_gpu=False, cache_dir=tmp_path, flags=("avx2",))
        assert (dtype, "neither AVX512-BF16 nor AMX-BF16" in why) == ("float32", True)
        assert precision.auto_dtype(HP, slots=2, on_gpu=True, cache_dir=tmp_path)[0] == "float32"
    assert not list(tmp_path.iterdir())


def test_auto_dtype_where_bfloat16_is_native_measures_once_and_reads_it_back(tmp_path):
    """Run on this CPU with the flags of one that has AMX: the timing is real, the decision follows it."""
    dtype, why = precision.auto_dtype(
        HP, slots=2, on_gpu=False, cache_dir=tmp_path, flags=("amx_bf16",), repeats=1
    )
    assert why.startswith("auto: bfloat16 measured 1 rows") and dtype in ("float32", "bfloat16")
    with mock.patch.object(precision, "time_matmuls", side_effect=AssertionError("measured again")):
        again = precision.auto_dtype(HP, slots=2, on_gpu=False, cache_dir=tmp_path, flags=("amx_bf16",))
    assert again[0] == dtype and "earlier start" in again[1]
    (stored,) = tmp_path.iterdir()
    stored.write_text("{broken")
    assert precision.auto_dtype(
        HP, slots=2, on_gpu=False, cache_dir=tmp_path, flags=("amx_bf16",), repeats=1
    )[0]
