"""Why TensorFlow sees no GPU, in one line, from facts gathered without importing TensorFlow.

"GPU not found" is the most common complaint about TensorFlow GPU images, and TensorFlow's own
explanation is a log line among hundreds. The usual causes, checked in the order a user fixes
them: visible devices set to nothing, a CPU-only TensorFlow build, no NVIDIA driver (on Docker:
``--gpus`` missing or no NVIDIA Container Toolkit), CUDA libraries missing from the image, an
index in ``CUDA_VISIBLE_DEVICES`` the driver does not have. :func:`gather` reads the facts (cheap:
a few ``dlopen`` calls, no CUDA context), :func:`why_no_gpu` is a pure function of them, so every
branch is testable on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# What TensorFlow 2.21's CUDA build dlopens (CUDA 12, cuDNN 9); the pip wheels of
# tensorflow[and-cuda] ship them under site-packages/nvidia/*/lib.
CUDA_LIBRARIES = (
    "libcudart.so.12",
    "libcublas.so.12",
    "libcublasLt.so.12",
    "libcufft.so.11",
    "libcusparse.so.12",
    "libcusolver.so.11",
    "libcudnn.so.9",
)


@dataclass(frozen=True)
class GpuFacts:
    cuda_visible_devices: str | None  # the variable as set; None when unset
    cuda_build: bool  # TensorFlow was built with CUDA (not tensorflow-cpu)
    driver: bool  # libcuda.so.1, the driver's library, loads
    missing_libraries: tuple[str, ...]  # CUDA/cuDNN libraries that neither load nor sit in nvidia wheels
    driver_gpus: int | None  # GPUs the driver reports (nvidia-smi), None when it cannot be asked


def hidden_by_env(cvd: str | None) -> bool:
    """``CUDA_VISIBLE_DEVICES=-1`` (or any negative first index): the user hid the GPUs on purpose."""
    return cvd is not None and cvd.strip().startswith("-")


def gpu_requested(cvd: str | None, *, expect: bool = False) -> bool:
    """A GPU is asked for when ``CUDA_VISIBLE_DEVICES`` is set to anything but a hiding value, or
    the caller expects one (``devices --expect-gpu``, a placement on ``GPU:N``)."""
    if hidden_by_env(cvd):
        return False
    return expect or cvd is not None


def why_no_gpu(f: GpuFacts, tf_version: str = "2.21.0") -> str:
    """One line: the first cause a user can act on."""
    cvd = f.cuda_visible_devices
    if cvd is not None and not cvd.strip():
        return "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU (unset it or list indices, e.g. 0,1)"
    if not f.cuda_build:
        return (
            "this TensorFlow is a CPU-only build (tensorflow-cpu): install the gpu extra "
            f"(tensorflow[and-cuda]=={tf_version}) or use the Dockerfile.cuda image"
        )
    if not f.driver:
        return (
            "no NVIDIA driver: libcuda.so.1 cannot be loaded (install the driver on the host; "
            "in Docker run with --gpus all on a host with the NVIDIA Container Toolkit)"
        )
    if f.missing_libraries:
        return (
            f"CUDA libraries missing: {', '.join(f.missing_libraries)} (no CUDA runtime in this "
            f"image or venv: install tensorflow[and-cuda]=={tf_version})"
        )
    if f.driver_gpus == 0:
        return "the NVIDIA driver loads but reports no GPU (nvidia-smi lists none)"
    if f.driver_gpus is not None and cvd is not None:
        wanted = [p.strip() for p in cvd.split(",") if p.strip()]
        absent = [p for p in wanted if p.isdigit() and int(p) >= f.driver_gpus]
        if absent:
            return (
                f"CUDA_VISIBLE_DEVICES={cvd} names GPU {', '.join(absent)} but the driver has "
                f"{f.driver_gpus} (0..{f.driver_gpus - 1})"
            )
    return (
        "TensorFlow sees no GPU although the driver and CUDA libraries load; run with "
        "TF_CPP_MIN_LOG_LEVEL=0 for TensorFlow's reason (often a driver older than its CUDA)"
    )


def gather(cuda_build: bool | None = None) -> GpuFacts:
    """The facts on this machine. ``cuda_build`` from TensorFlow when the caller has imported it;
    otherwise from the installed distributions (tensorflow-cpu alone means a CPU-only build)."""
    if cuda_build is None:
        cuda_build = _installed("tensorflow") and not _installed("tensorflow-cpu")
    missing = tuple(lib for lib in CUDA_LIBRARIES if not _loads(lib) and not _in_nvidia_wheels(lib))
    return GpuFacts(
        os.environ.get("CUDA_VISIBLE_DEVICES"),
        cuda_build,
        _loads("libcuda.so.1"),
        missing,
        _driver_gpu_count(),
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def _in_nvidia_wheels(library: str) -> bool:
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return any(glob.glob(str(Path(root) / "*" / "lib" / library)) for root in roots)


def _driver_gpu_count() -> int | None:
    """GPUs listed by ``nvidia-smi -L`` (all of them: it ignores CUDA_VISIBLE_DEVICES)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
