"""`gpt2-serve healthcheck`: the container's HEALTHCHECK; exit 0 healthy, 1 not, with one line why.

Light on purpose (standard library only, no TensorFlow: it runs every 30 s beside the server).
Healthy means ``GET /health`` answers 200 and, when a GPU is asked for (``CUDA_VISIBLE_DEVICES``
set, see :mod:`app.cli.gpu_diagnosis`), at least one loaded model runs on a GPU: a GPU image that
quietly fell back to the CPU is reported unhealthy with the reason ``gpt2-serve devices`` gives,
so ``docker ps`` and ``docker inspect`` show it.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request

from app.cli import gpu_diagnosis


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "healthcheck",
        help="probe a running server (the Docker HEALTHCHECK)",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
    )
    port = os.environ.get("GPT2_PORT", "8000")
    p.add_argument(
        "--url", default=f"http://127.0.0.1:{port}", help="server base URL (default: GPT2_PORT on loopback)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    p.set_defaults(func=run)


def fetch(url: str, timeout: float) -> tuple[int, str]:
    """``(status, body)``; status 0 when nothing answered."""
    request = urllib.request.Request(url)
    keys = [k.strip() for k in os.environ.get("GPT2_API_KEYS", "").split(",") if k.strip()]
    if keys:  # /health is public, /models is not when API keys are set
        request.add_header("Authorization", f"Bearer {keys[0]}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback URL
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def check(url: str, timeout: float) -> str | None:
    """None when healthy, else the reason in one line."""
    status, body = fetch(f"{url}/health", timeout)
    if status != 200:
        return f"{url}/health: " + (f"{status} {body.strip()[:300]}" if status else f"no answer ({body})")
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpu_diagnosis.gpu_requested(cvd):
        return None
    status, body = fetch(f"{url}/models", timeout)
    if status != 200:
        return f"{url}/models: {status} {body.strip()[:300]}"
    models = json.loads(body).get("models", [])
    if any("GPU" in m.get("device", "") for m in models):  # decided at start-up, before loading
        return None
    reason = gpu_diagnosis.why_no_gpu(gpu_diagnosis.gather())
    return f"GPU asked for (CUDA_VISIBLE_DEVICES={cvd}) but every model runs on the CPU: {reason}"


def run(args: argparse.Namespace) -> int:
    problem = check(args.url.rstrip("/"), args.timeout)
    print(f"unhealthy: {problem}" if problem else "healthy")
    return 1 if problem else 0
