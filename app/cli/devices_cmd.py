"""`gpt2-serve devices`: what TensorFlow sees, where each configured model would go, and its memory plan.

A one-command diagnosis for "GPU not found": the TensorFlow build (CUDA and cuDNN versions, or
CPU-only), each GPU with its free memory, the CPU, then each model of the configuration (the same
``GPT2_*`` variables and flags as ``serve``) with its device and the plan ``serve`` would make.
When a GPU is asked for (``CUDA_VISIBLE_DEVICES`` set, a placement on ``GPU:N``, or
``--expect-gpu``) and TensorFlow sees none, the last line says why
(:mod:`app.cli.gpu_diagnosis`). The exit status is 1 then, and when a model cannot be found, does
not fit its device or its placement names a device TensorFlow lacks: what ``serve`` would fail on.

GPU memory growth is switched on before TensorFlow starts, so running this next to a serving
process (``docker exec``) does not try to take the whole card.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from app.cli import gpu_diagnosis
from app.cli.model_hparams import model_hparams
from app.cli.plan_cmd import human
from app.cli.settings_flags import add_settings_flags, settings_from_args
from app.engine import memory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices",
        help="what TensorFlow sees, where each model would go, memory plans",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    p.add_argument("--expect-gpu", action="store_true", help="exit 1 with the reason when no GPU is visible")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    add_settings_flags(
        p, fields=("models", "models_dir", "placement", "dtype", "slots", "cpu_devices", "cache_dir")
    )
    p.set_defaults(func=run)


def tensorflow_report() -> dict:
    import tensorflow as tf

    from app.engine import devices

    build = dict(tf.sysconfig.get_build_info())
    gpus = []
    for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(
            {
                "device": f"/GPU:{i}",
                "name": details.get("device_name", "?"),
                "compute_capability": details.get("compute_capability"),
                "free_bytes": devices.available_memory(f"/GPU:{i}"),
            }
        )
    return {
        "tensorflow": tf.__version__,
        "cuda_build": bool(build.get("is_cuda_build")),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "gpus": gpus,
        "cpu": cpu_report(),
    }


def cpu_report() -> dict:
    from app.engine import devices

    name, total = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    except OSError:
        pass
    from app.engine import kernels

    flags = kernels.cpu_info()[1]
    return {
        "name": name,
        "kernel_flags": list(flags),
        "bfloat16": (
            f"native ({', '.join(f for f in flags if f in kernels.BF16_FLAGS)}): dtype=auto times it against float32"
            if kernels.bf16_native(flags)
            else "emulated (neither AVX512-BF16 nor AMX-BF16): dtype=auto keeps float32"
        ),
        "cores": os.cpu_count(),
        "total_bytes": total,
        "free_bytes": devices.available_memory("/CPU:0"),
    }


def model_report(settings) -> tuple[list[dict], str | None]:
    """Each model's device and plan as ``serve`` would make them; the placement error, if any."""
    from app.engine import devices
    from app.server.metrics import Metrics
    from app.server.registry import Registry

    try:
        entries = Registry(settings, Metrics()).entries.values()
    except ValueError as exc:
        return [], str(exc)
    out = []
    for entry in entries:
        row: dict = {"name": entry.name, "device": entry.device}
        try:
            hp, row["source"] = model_hparams(entry.source, settings.models_dir)
        except (FileNotFoundError, ValueError) as exc:
            row["error"] = str(exc).splitlines()[0]
            out.append(row)
            continue
        row["kernels"] = stored_kernels(settings, entry.source, row["source"])
        free = devices.available_memory(entry.device)
        dtype = "float32" if settings.dtype == "auto" else settings.dtype  # auto: sized as serve sizes it
        slots = memory.startup_slots(hp, dtype=dtype, configured=settings.slots, available=free)
        plan = memory.plan(hp, slots=slots, dtype=dtype)
        row.update(
            plan=plan.as_dict(), free_bytes=free, fits=None if free is None else plan.total_bytes <= free
        )
        out.append(row)
    return out, None


def stored_kernels(settings, name: str, source: str) -> list[str]:
    """The kernel plans ``serve`` measured for this model on this machine (kernels=auto), one line each."""
    from app.engine import kernels

    folder = Path(source)
    if not folder.is_dir():
        return []
    cache = settings.cache_dir / folder.name if settings.cache_dir is not None else folder / ".gpt2-serve"
    if not cache.is_dir():
        return []
    return [
        f"{key.get('dtype')}, {max(key.get('decode_rows') or [0])} slots: {plan.summary()}"
        for key, plan in kernels.stored_here(cache)
    ]


def gpu_problem(report: dict, settings, expect: bool) -> str | None:
    """The one-line reason when a GPU is asked for and TensorFlow sees none, else None."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    placed_on_gpu = any("GPU" in d.upper() for d in settings.placement.values())
    if report["gpus"] or not gpu_diagnosis.gpu_requested(cvd, expect=expect or placed_on_gpu):
        return None
    facts = gpu_diagnosis.gather(cuda_build=report["cuda_build"])
    asked = f"CUDA_VISIBLE_DEVICES={cvd}" if cvd is not None else "a GPU placement or --expect-gpu"
    return f"GPU asked for ({asked}) but TensorFlow sees none: {gpu_diagnosis.why_no_gpu(facts, report['tensorflow'])}"


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    settings = settings_from_args(args)
    if settings.cpu_devices > 1:
        from app.engine.devices import split_cpu

        split_cpu(settings.cpu_devices)  # before TensorFlow sets up its devices, as serve does
    report = tensorflow_report()
    report["models"], report["placement_error"] = model_report(settings)
    report["gpu_problem"] = gpu_problem(report, settings, args.expect_gpu)
    print(json.dumps(report, indent=2) if args.json else render(report))
    unfit = any("error" in m or m.get("fits") is False for m in report["models"])
    return 1 if report["gpu_problem"] or report["placement_error"] or unfit else 0


def _size(n: int | None) -> str:
    return "unknown" if n is None else human(n)


def render(r: dict) -> str:
    build = f"CUDA {r['cuda_version']}, cuDNN {r['cudnn_version']}" if r["cuda_build"] else "CPU-only build"
    lines = [f"TensorFlow {r['tensorflow']} ({build})"]
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={cvd} hides them)" if gpu_diagnosis.hidden_by_env(cvd) else ""
    lines.append("GPUs: " + ("" if r["gpus"] else "none" + hidden))
    for g in r["gpus"]:
        free = (
            "free memory unknown (install nvidia-ml-py)"
            if g["free_bytes"] is None
            else f"{human(g['free_bytes'])} free"
        )
        lines.append(f"  {g['device']}  {g['name']}  compute {g['compute_capability']}  {free}")
    c = r["cpu"]
    lines.append(
        f"CPU: {c['name']}, {c['cores']} cores, {_size(c['total_bytes'])}, {_size(c['free_bytes'])} free"
    )
    lines.append(
        f"  kernel flags: {' '.join(c['kernel_flags']) or 'none of note'}; bfloat16: {c['bfloat16']}"
    )
    lines.append("Models:")
    for m in r["models"]:
        if "error" in m:
            lines.append(f"  {m['name']} -> {m['device']}: {m['error']}")
            continue
        p = m["plan"]
        fits = {None: "fit not checked", True: "fits", False: "DOES NOT FIT"}[m["fits"]]
        lines.append(
            f"  {m['name']} -> {m['device']} ({m['source']}): {p['dtype']} weights {human(p['weights_bytes'])}"
            f" + {p['slots']} slots x {human(p['cache_bytes_per_slot'])} + {human(p['overhead_bytes'])}"
            f" overhead = {human(p['total_bytes'])}; {_size(m['free_bytes'])} free: {fits}"
        )
        for line in m["kernels"] or [
            "not measured on this machine yet (kernels=auto times them at the first start)"
        ]:
            lines.append(f"    kernels: {line}")
    if r["placement_error"]:
        lines.append(f"placement: {r['placement_error']}")
    if r["gpu_problem"]:
        lines.append(r["gpu_problem"])
    return "\n".join(lines)
