"""`gpt2-serve devices`: with ``CUDA_VISIBLE_DEVICES`` set (``-1``, a GPU that TensorFlow cannot
see: the one-line reason, exit 1; empty) run as a user runs it, in a fresh process, since
TensorFlow reads that variable once at start-up; without it (this CPU machine as it is) in this
process. Every branch of the reason (:func:`app.cli.gpu_diagnosis.why_no_gpu`) is a pure function
of the facts, checked one by one, since a machine without a GPU shows only some of them for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from app.cli.gpu_diagnosis import GpuFacts, gather, gpu_requested, hidden_by_env, why_no_gpu
from tests.support.cli import cli

ROOT = Path(__file__).resolve().parents[2]


class Report(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def devices_here(monkeypatch):
    """``gpt2-serve devices ARGS`` in this process, with neither ``CUDA_VISIBLE_DEVICES`` nor any
    GPT2_* setting in the environment."""
    for name in [k for k in os.environ if k.startswith("GPT2_") or k == "CUDA_VISIBLE_DEVICES"]:
        monkeypatch.delenv(name)

    def run(*argv: str) -> Report:
        return Report(*cli(["devices", *argv]))

    return run


def devices(*argv: str, cvd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT2_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES=cvd)
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "devices", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cpu_machine_report(tiny_dirs, devices_here):
    proc = devices_here("--models", f"{tiny_dirs['openai']},124M", "--slots", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["tensorflow"] and r["cuda_build"] is False and r["gpus"] == []
    assert r["cpu"]["cores"] == os.cpu_count() and r["cpu"]["free_bytes"] > 0
    tiny, big = r["models"]
    assert tiny["name"] == "tiny-openai" and tiny["device"] == "/CPU:0" and tiny["fits"] is True
    assert tiny["plan"]["slots"] == 2 and tiny["plan"]["cache_bytes_per_slot"] == 2 * 2 * 129 * 64 * 4
    assert big["source"].startswith("GPT-2 124M shape") and big["plan"]["weights_bytes"] == 497_759_232
    assert r["gpu_problem"] is None and r["placement_error"] is None


@pytest.mark.system
def test_text_report_with_gpus_hidden(tiny_dirs):
    proc = devices("--models", str(tiny_dirs["hf"]), cvd="-1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("TensorFlow ") and "CPU-only build" in lines[0]
    assert lines[1] == "GPUs: none (CUDA_VISIBLE_DEVICES=-1 hides them)"
    assert lines[2].startswith("CPU: ") and "cores" in lines[2]
    assert lines[3].startswith("  kernel flags: ") and "bfloat16: " in lines[3]
    assert (
        lines[4] == "Models:" and lines[5].startswith("  tiny-hf -> /CPU:0 (") and lines[5].endswith(": fits")
    )
    assert lines[6].startswith("    kernels: not measured on this machine yet")
    assert len(lines) == 7  # no complaint: hiding the GPUs was asked for


@pytest.mark.system
def test_gpu_asked_for_but_not_visible_says_why_in_one_line(tiny_dirs):
    proc = devices("--models", str(tiny_dirs["openai"]), cvd="0")
    assert proc.returncode == 1
    last = proc.stdout.splitlines()[-1]
    # This machine runs tensorflow-cpu, so that is the first cause a user would fix.
    assert last == (
        "GPU asked for (CUDA_VISIBLE_DEVICES=0) but TensorFlow sees none: this TensorFlow is a "
        "CPU-only build (tensorflow-cpu): install the gpu extra (tensorflow[and-cuda]==2.21.0) "
        "or use the Dockerfile.cuda image"
    )


@pytest.mark.system
def test_empty_visible_devices(tiny_dirs):
    proc = devices("--models", str(tiny_dirs["openai"]), cvd="")
    assert proc.returncode == 1 and proc.stdout.splitlines()[-1].endswith(
        "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU (unset it or list indices, e.g. 0,1)"
    )


def test_a_gpu_placement_without_a_gpu(tiny_dirs, devices_here):
    proc = devices_here("--models", str(tiny_dirs["openai"]), "--placement", "tiny-openai=GPU:0")
    assert proc.returncode == 1
    assert "placement: device 'GPU:0' is not available; TensorFlow sees: /CPU:0" in proc.stdout
    assert "GPU asked for (a GPU placement or --expect-gpu) but TensorFlow sees none" in proc.stdout


def test_missing_model_exits_1_naming_it(tmp_path, devices_here):
    proc = devices_here("--models", "nothing-here", "--models-dir", str(tmp_path))
    assert proc.returncode == 1 and "nothing-here -> /CPU:0: no model 'nothing-here'" in proc.stdout


GPU_OK = GpuFacts(cuda_visible_devices="0", cuda_build=True, driver=True, missing_libraries=(), driver_gpus=2)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cuda_visible_devices": " "}, "CUDA_VISIBLE_DEVICES is set but empty"),
        ({"cuda_build": False}, "CPU-only build (tensorflow-cpu)"),
        ({"driver": False}, "no NVIDIA driver: libcuda.so.1 cannot be loaded"),
        ({"missing_libraries": ("libcudnn.so.9",)}, "CUDA libraries missing: libcudnn.so.9 (no CUDA runtime"),
        ({"driver_gpus": 0}, "reports no GPU"),
        ({"cuda_visible_devices": "1,3"}, "CUDA_VISIBLE_DEVICES=1,3 names GPU 3 but the driver has 2 (0..1)"),
        ({}, "TensorFlow sees no GPU although the driver and CUDA libraries load"),
        ({"driver_gpus": None, "cuda_visible_devices": "7"}, "although the driver and CUDA libraries load"),
    ],
)
def test_each_reason(changes, expected):
    facts = GpuFacts(**{**GPU_OK.__dict__, **changes})
    reason = why_no_gpu(facts)
    assert expected in reason and "\n" not in reason


def test_first_cause_wins():
    # No driver and a CPU build: installing a driver would not help yet, so the build is named.
    facts = GpuFacts(
        None, cuda_build=False, driver=False, missing_libraries=("libcudart.so.12",), driver_gpus=None
    )
    assert "CPU-only build" in why_no_gpu(facts)


def test_requested_and_hidden():
    assert not gpu_requested(None) and gpu_requested(None, expect=True)
    assert gpu_requested("0") and gpu_requested("")
    assert not gpu_requested("-1", expect=True) and hidden_by_env("-1")


def test_gather_on_this_machine():
    facts = gather()
    assert facts.cuda_build is False  # tensorflow-cpu is what the test venv has
    assert facts.cuda_visible_devices == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow  # times the kernels
def test_devices_says_which_kernels_serve_chose_here_and_whether_bfloat16_is_native(
    tiny_dirs, tmp_path, devices_here, shelf
):
    from app.engine import kernels
    from app.runtime.load import load_model

    model = load_model(
        tiny_dirs["openai"], slots=2, prefill_chunk=32, kernels="auto", cache_dir=tmp_path, shelf=shelf
    )
    before = devices_here("--models", str(tiny_dirs["openai"]), "--cache-dir", str(tmp_path))
    assert "kernels: not measured on this machine yet" in before.stdout, before.stderr[-2000:]
    plan = model.engine.choose_kernels(model.cache_dir, repeats=1)
    proc = devices_here("--models", str(tiny_dirs["openai"]), "--cache-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    (line,) = r["models"][0]["kernels"]
    assert line.startswith("float32, 2 slots: decode 1:") and plan.summary().split(" (")[0] in line
    flags = kernels.cpu_info()[1]
    assert r["cpu"]["kernel_flags"] == list(flags)
    assert r["cpu"]["bfloat16"].startswith("native" if kernels.bf16_native(flags) else "emulated")


def test_devices_with_dtype_auto_plans_memory_as_serve_sizes_it(tiny_dirs, devices_here):
    proc = devices_here("--models", str(tiny_dirs["openai"]), "--dtype", "auto", "--slots", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["models"][0]["plan"]["dtype"] == "float32"
