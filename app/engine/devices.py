"""Which device a model runs on.

Model *i* goes to GPU *i* (wrapping around) unless a placement names a device; with no GPU visible
(none present, or ``CUDA_VISIBLE_DEVICES=-1``, which TensorFlow honours) everything runs on CPU.
:func:`split_cpu` divides the CPU into logical devices so that multi-device placement can be
exercised on a machine without GPUs; it must run before TensorFlow initialises its devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf


def gpus() -> list[str]:
    return [f"/GPU:{i}" for i in range(len(tf.config.list_logical_devices("GPU")))]


def cpus() -> list[str]:
    return [f"/CPU:{i}" for i in range(len(tf.config.list_logical_devices("CPU")))]


def normalize(device: str) -> str:
    """``gpu:1`` / ``GPU:1`` / ``/device:GPU:1`` -> ``/GPU:1``; raise if TensorFlow has no such device."""
    name = device.strip()
    name = name.removeprefix("/").removeprefix("device:").removeprefix("job:localhost/")
    kind, _, index = name.partition(":")
    kind = kind.upper()
    if kind not in ("CPU", "GPU") or not index.isdigit():
        raise ValueError(f"device {device!r} is not of the form CPU:N or GPU:N")
    canonical = f"/{kind}:{int(index)}"
    available = gpus() + cpus()
    if canonical not in available:
        raise ValueError(f"device {device!r} is not available; TensorFlow sees: {', '.join(available)}")
    return canonical


def default_device(index: int) -> str:
    """Device for the ``index``-th model when no placement is given."""
    g = gpus()
    return g[index % len(g)] if g else "/CPU:0"


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (``/CPU:0`` .. ``/CPU:n-1``). Call before any TF op."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def available_memory(device: str) -> int | None:
    """Free bytes on ``device``, or None when it cannot be told (then no check is made).

    CPU: the kernel's MemAvailable. GPU: NVML's free memory when ``pynvml`` (package nvidia-ml-py,
    in the ``gpu`` extra) is installed; TensorFlow itself reports only what it has allocated.
    """
    if device.startswith("/CPU"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    index = int(device.rsplit(":", 1)[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        index = int(visible.split(",")[index])
    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
    finally:
        pynvml.nvmlShutdown()
