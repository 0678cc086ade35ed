"""Device names and placement: ``normalize`` and ``default_device`` here (no GPU), and two models on
two logical CPUs in a fresh process (``split_cpu`` must run before TensorFlow sets up its devices,
which pytest's process has long done)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.engine import devices


@pytest.mark.parametrize(
    "name", ["cpu:0", "/device:CPU:0", "CPU:0", "/CPU:0", " Cpu:0 ", "/job:localhost/CPU:0"]
)
def test_normalize_accepts_cpu0_spellings(name):
    assert devices.normalize(name) == "/CPU:0"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("TPU:0", "is not of the form CPU:N or GPU:N"),
        ("CPU:x", "is not of the form CPU:N or GPU:N"),
        ("CPU:", "is not of the form CPU:N or GPU:N"),
        ("GPU:7", "is not available; TensorFlow sees: /CPU:0"),
        ("CPU:3", "is not available; TensorFlow sees: /CPU:0"),
    ],
)
def test_normalize_rejects_with_a_clear_message(name, expected):
    with pytest.raises(ValueError) as info:
        devices.normalize(name)
    msg = str(info.value)
    assert repr(name) in msg and expected in msg and "\n" not in msg


def test_no_gpu_here_so_everything_defaults_to_cpu():
    assert devices.gpus() == []
    assert devices.cpus() == ["/CPU:0"]
    assert devices.default_device(0) == "/CPU:0"
    assert devices.default_device(5) == "/CPU:0"


def test_available_memory_on_cpu_is_positive():
    free = devices.available_memory("/CPU:0")
    assert isinstance(free, int) and free > 0


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    from app.engine import devices
    devices.split_cpu(2)
    from app.runtime.load import load_model

    path = sys.argv[1]
    out = {"cpus": devices.cpus(), "gpus": devices.gpus(), "models": {}}
    logits = {}
    for dev in ("CPU:0", "CPU:1"):
        model = load_model(path, device=dev, slots=1)
        eng = model.engine
        # Every variable the engine holds (weights, KV cache), whatever its attributes are called.
        variables = [v for v in tf.nest.flatten(list(vars(eng).values())) if isinstance(v, tf.Variable)]
        out["models"][dev] = {"device": model.device,
                              "variable_devices": sorted({v.device for v in variables})}
        ids = model.encoder.encode("Hello there, two devices")
        logits[dev] = eng.prefill(0, ids)
    out["max_abs_diff"] = float(np.max(np.abs(logits["CPU:0"] - logits["CPU:1"])))
    out["finite"] = bool(np.isfinite(logits["CPU:0"]).all())
    print(json.dumps(out))
    """
)


@pytest.mark.system
def test_two_models_on_two_logical_cpus(tiny_dirs):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_dirs["openai"])],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cpus"] == ["/CPU:0", "/CPU:1"] and out["gpus"] == []
    for dev in ("CPU:0", "CPU:1"):
        model = out["models"][dev]
        assert model["device"] == f"/{dev}"
        assert model["variable_devices"] and all(d.endswith(dev) for d in model["variable_devices"]), model
    assert out["finite"]
    assert out["max_abs_diff"] < 1e-5
