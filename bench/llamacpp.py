"""llama.cpp baseline for the engine benchmark: the same GPT-2 weights through llama.cpp on the CPU.

Run alone: ``.venv/bin/python bench/llamacpp.py [--threads 2] [--prompt 128] [--gen 128]``
(builds, converts and prints the figures); ``bench/engine.py`` calls ``baseline()`` instead.

What is built (issue 8)
  * llama.cpp as vendored in the PyPI sdist of llama-cpp-python 0.3.36 (its CHANGELOG: "update
    llama.cpp to ggml-org/llama.cpp@0c1e57098"; the sdist also carries that one commit's git data,
    which says 0c1e570). The commit is passed to cmake as ``LLAMA_BUILD_COMMIT`` and llama-bench
    reports it (its build number, 1, means nothing: the git data is shallow).
    Downloaded with ``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`` into
    ``build/llamacpp/``, unpacked there, configured with ``cmake -DGGML_NATIVE=ON
    -DCMAKE_BUILD_TYPE=Release`` (plus switches that only leave out what is not built: tests,
    examples, server, the unified app, OpenSSL) into ``build/llamacpp/cmake-build``, and only the
    targets ``llama-bench`` and ``llama-batched-bench`` are compiled (``-j2``, under ``nice -n 19``).
    Everything else is llama.cpp's default (OpenMP, llamafile sgemm, ggml's CPU backend).
    ``build/llamacpp/build-info.json`` records what was built; a second call reuses it.
  * The weights: ``random_params(PRESETS["124M"], seed=0)``, the arrays bench/engine.py uses,
    written as a Hugging Face GPT-2 folder (``write_hf_model``, real 50257-token vocabulary) to
    ``build/llamacpp/gpt2-124M-seed0/`` and converted by the sdist's own ``convert_hf_to_gguf.py
    --outtype f32`` (its vendored ``gguf-py`` on ``PYTHONPATH``; torch and transformers come from
    the project's test extra) to ``build/llamacpp/gpt2-124M-seed0-f32.gguf``.

What is measured (``measure``), all with ``-t THREADS`` (2), llama.cpp's other defaults
  * ``llama-bench -p P -n 0`` and ``-p 0 -n G -d P`` with ``-o json``: prefill tokens/s at batch 1
    (a P-token prompt into an empty cache) and decode tokens/s at batch 1 (G tokens one at a time
    after a P-token context, as the engine's decode figure is). Each is llama-bench's mean over its
    repetitions (``-r``, default 5) after its own warm-up run.
  * ``llama-batched-bench -npp P -ntg G -npl 8,32 -c B_max*(P+G)``: B sequences, each its own
    P-token prompt, then G decode steps of B tokens; decode tokens/s = B*G / decode time (its
    ``S_TG t/s`` column, prefill not included). ``--output-format jsonl`` is parsed when that
    flag is offered, the markdown table otherwise.
Timings are wall clock at the caller's priority (only the build is niced), on whatever else the
machine is doing: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SDIST_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{SDIST_VERSION}"
TARGETS = ("llama-bench", "llama-batched-bench")
CMAKE_FLAGS = (
    "-DGGML_NATIVE=ON",
    "-DCMAKE_BUILD_TYPE=Release",
    # Only leave out what is not built; none of these changes the two tools' code.
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
MODEL_NAME = "gpt2-124M-seed0"
INSTALL_WAIT_S = 900  # how long to wait for a `make install` still running in the venv


def _work_dir(root: Path) -> Path:
    return root / "build" / "llamacpp"


def _venv_bin(root: Path, name: str) -> Path | None:
    path = root / ".venv" / "bin" / name
    return path if path.exists() else None


def _nice() -> list[str]:
    return ["nice", "-n", "19"] if shutil.which("nice") else []


def _run_logged(cmd: Sequence[str | Path], log: Path, **kwargs: Any) -> None:
    """Run ``cmd`` niced, output appended to ``log``; RuntimeError naming the log's last line on failure."""
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.run([*_nice(), *map(str, cmd)], stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else ""
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited {proc.returncode} ({last[:160]}; see {log})")


def _wait_for_install(root: Path) -> None:
    """If the project venv is still being installed (no ``.installed-test`` stamp yet), wait a while."""
    stamp = root / ".venv" / ".installed-test"
    if not (root / ".venv").is_dir() or stamp.exists():
        return
    print(f"llama.cpp: waiting for the venv install to finish ({stamp} missing)", flush=True)
    deadline = time.monotonic() + INSTALL_WAIT_S
    while not stamp.exists() and time.monotonic() < deadline:
        time.sleep(5)


def _pip(root: Path) -> list[str]:
    pip = _venv_bin(root, "pip")
    return [str(pip)] if pip else [sys.executable, "-m", "pip"]


def _python(root: Path) -> str:
    python = _venv_bin(root, "python")
    return str(python) if python else sys.executable


def source_dir(root: Path = ROOT) -> Path:
    """The unpacked sdist's ``vendor/llama.cpp`` (may not exist yet)."""
    return _work_dir(root) / SDIST_NAME / "vendor" / "llama.cpp"


def llama_cpp_commit(root: Path = ROOT) -> str | None:
    """The vendored llama.cpp's commit: git's short hash, else the sdist's CHANGELOG's, else None."""
    src = source_dir(root)
    if (src / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        lines = proc.stdout.split()
        # --show-toplevel guards against a broken .git file sending git up to an enclosing repo.
        if proc.returncode == 0 and len(lines) == 2 and Path(lines[0]).resolve() == src.resolve():
            return lines[1]
    changelog = _work_dir(root) / SDIST_NAME / "CHANGELOG.md"
    try:
        text = changelog.read_text(encoding="utf-8")
    except OSError:
        return None
    section = re.search(rf"^## \[{re.escape(SDIST_VERSION)}\]\s*$(.*?)(?=^## \[|\Z)", text, re.M | re.S)
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section[1]) if section else None
    return found[1] if found else None


def _fetch_source(root: Path, log: Path) -> Path:
    work = _work_dir(root)
    src = source_dir(root)
    if (src / "CMakeLists.txt").exists():
        return src
    tarball = work / f"{SDIST_NAME}.tar.gz"
    if not tarball.exists():
        _wait_for_install(root)
        cmd = [
            *_pip(root),
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={SDIST_VERSION}",
        ]
        _run_logged([*cmd, "-d", work], log)
        if not tarball.exists():
            raise RuntimeError(f"pip download left no {tarball.name} in {work}")
    staging = work / f".{SDIST_NAME}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(staging, filter="data")
        shutil.rmtree(work / SDIST_NAME, ignore_errors=True)
        (staging / SDIST_NAME).rename(work / SDIST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (src / "CMakeLists.txt").exists():
        raise RuntimeError(f"the sdist has no vendor/llama.cpp ({src})")
    return src


def ensure_built(root: Path = ROOT) -> Path | None:
    """Build llama-bench and llama-batched-bench from the sdist (once); their folder, or None.

    None comes with one printed line saying why (no cmake or compiler, download or build failed).
    """
    work = _work_dir(root)
    build = work / "cmake-build"
    bin_dir = build / "bin"
    info_path = work / "build-info.json"
    log = work / "build.log"
    try:
        work.mkdir(parents=True, exist_ok=True)
        src = _fetch_source(root, log)
        commit = llama_cpp_commit(root)
        flags = [*CMAKE_FLAGS, *([f"-DLLAMA_BUILD_COMMIT={commit}"] if commit else [])]
        wanted = {"sdist": f"llama-cpp-python=={SDIST_VERSION}", "commit": commit, "cmake_flags": flags}
        try:
            recorded = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        same = recorded is not None and {k: recorded.get(k) for k in wanted} == wanted
        if same and all((bin_dir / t).exists() for t in TARGETS):
            return bin_dir
        for tool in ("cmake", "c++", "cc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"no {tool} on PATH")
        started = time.monotonic()
        print(
            f"llama.cpp: building {', '.join(TARGETS)} (commit {commit or 'unknown'}) in {build}", flush=True
        )
        info_path.unlink(missing_ok=True)
        _run_logged(["cmake", "-S", src, "-B", build, *flags], log)
        _run_logged(["cmake", "--build", build, "--config", "Release", "-j2", "--target", *TARGETS], log)
        missing = [t for t in TARGETS if not (bin_dir / t).exists()]
        if missing:
            raise RuntimeError(f"the build left no {', '.join(missing)} in {bin_dir}")
        seconds = time.monotonic() - started
        info = {**wanted, "build_seconds": round(seconds, 1), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
        info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        print(f"llama.cpp: built in {seconds:.0f} s", flush=True)
        return bin_dir
    except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError) as exc:
        print(f"llama.cpp: skipped, cannot build it: {exc}", flush=True)
        return None


def ensure_hf_model(root: Path = ROOT) -> Path:
    """``build/llamacpp/gpt2-124M-seed0``: bench/engine.py's weights as a Hugging Face GPT-2 folder."""
    dest = _work_dir(root) / MODEL_NAME
    if (dest / "model.safetensors").exists():
        return dest
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from app.model.hparams import PRESETS
    from app.model.random_init import write_random_model

    # write_random_model draws random_params(hp, seed=seed): the same arrays as bench/engine.py's.
    return write_random_model(dest, PRESETS["124M"], seed=0, layout="hf")


def convert(hf_dir: Path, out: Path, *, root: Path = ROOT) -> Path | None:
    """``hf_dir`` (a Hugging Face GPT-2 folder) -> f32 GGUF ``out`` with the sdist's converter.

    Reuses ``out`` when it is newer than the folder's weights; None (and one printed line) on failure.
    """
    weights = hf_dir / "model.safetensors"
    if out.exists() and weights.exists() and out.stat().st_mtime >= weights.stat().st_mtime:
        return out
    src = source_dir(root)
    script = src / "convert_hf_to_gguf.py"
    if not script.exists():
        print(f"llama.cpp: cannot convert, no {script} (run ensure_built first)", flush=True)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src / "gguf-py"), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = out.with_name(out.name + ".log")
    log.unlink(missing_ok=True)
    cmd = [_python(root), script, hf_dir, "--outtype", "f32", "--outfile", partial]
    try:
        _run_logged(cmd, log, env=env, cwd=src)
        partial.replace(out)
    except (OSError, RuntimeError) as exc:
        print(f"llama.cpp: cannot convert {hf_dir} to GGUF: {exc}", flush=True)
        partial.unlink(missing_ok=True)
        return None
    return out


def _help(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _check(cmd: Sequence[str | Path], *, timeout: float) -> str:
    # Not niced: measured at the caller's priority, as bench/engine.py measures the engine.
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(str(cmd[0])).name} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def _llama_bench(
    bin_dir: Path, gguf: Path, args: Sequence[str], threads: int, repetitions: int | None
) -> dict:
    cmd = [bin_dir / "llama-bench", "-m", gguf, "-t", str(threads), "-o", "json", *args]
    if repetitions is not None:
        cmd += ["-r", str(repetitions)]
    rows = json.loads(_check(cmd, timeout=1800))
    if len(rows) != 1:
        raise RuntimeError(f"llama-bench {' '.join(args)} gave {len(rows)} results, expected 1")
    return rows[0]


def parse_batched_bench(text: str) -> list[dict[str, float]]:
    """llama-batched-bench's rows (jsonl lines or the markdown table) as dicts keyed by lower-case names.

    Keys: ``pp``, ``tg``, ``pl`` (batch), ``n_kv``, ``t_pp``, ``speed_pp``, ``t_tg``, ``speed_tg``,
    ``t``, ``speed`` (seconds and tokens/s), whichever format was printed.
    """
    rows: list[dict[str, float]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            rows.append({k.lower(): float(v) for k, v in row.items() if isinstance(v, (int, float))})
    if rows:
        return rows
    header: list[str] | None = None
    names = {
        "b": "pl",
        "s_pp t/s": "speed_pp",
        "s_tg t/s": "speed_tg",
        "s t/s": "speed",
        "t_pp s": "t_pp",
        "t_tg s": "t_tg",
        "t s": "t",
    }
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if any(c.lower() in ("pp", "tg") for c in cells):
                header = [names.get(c.lower(), c.lower()) for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---|---| line
        try:
            rows.append(dict(zip(header, map(float, cells), strict=True)))
        except ValueError:
            continue
    return rows


def measure(
    bin_dir: Path,
    gguf: Path,
    *,
    threads: int = 2,
    prompt: int = 128,
    gen: int = 128,
    batches: Sequence[int] = (1, 8, 32),
    repetitions: int | None = None,
) -> dict[str, Any]:
    """llama.cpp's prefill and decode tokens/s on ``gguf`` (see the module docstring for how).

    Returns ``{"prefill_b1": tok/s, "decode": {B: tok/s}, "version": str, ...}``: batch 1 from
    llama-bench, larger batches from llama-batched-bench; extra keys carry the spread and settings.
    Raises RuntimeError when a tool fails or prints nothing parsable.
    """
    bin_dir, gguf = Path(bin_dir), Path(gguf)
    pp = _llama_bench(bin_dir, gguf, ["-p", str(prompt), "-n", "0"], threads, repetitions)
    depth = "-d" in _help(bin_dir / "llama-bench").replace(",", " ").split()
    tg_args = ["-p", "0", "-n", str(gen), *(["-d", str(prompt)] if depth else [])]
    tg = _llama_bench(bin_dir, gguf, tg_args, threads, repetitions)
    result: dict[str, Any] = {
        "prefill_b1": float(pp["avg_ts"]),
        "prefill_b1_stddev": float(pp.get("stddev_ts", 0.0)),
        "decode": {},
        "decode_b1_stddev": float(tg.get("stddev_ts", 0.0)),
        "decode_b1_depth": int(tg.get("n_depth", 0)) if depth else 0,
        "version": f"b{pp.get('build_number', '?')}-{pp.get('build_commit', 'unknown')}",
        "threads": threads,
        "prompt": prompt,
        "gen": gen,
        "model": f"{gguf.name} ({pp.get('model_type', '?')}, {pp.get('model_size', 0) / 2**20:.0f} MiB)",
        "cpu": pp.get("cpu_info", ""),
        "settings": {
            k: pp.get(k) for k in ("n_batch", "n_ubatch", "type_k", "type_v", "flash_attn", "backends")
        },
    }
    if 1 in batches:
        result["decode"][1] = float(tg["avg_ts"])
    big = sorted({int(b) for b in batches if int(b) != 1})
    if big:
        binary = bin_dir / "llama-batched-bench"
        cmd = [
            binary,
            "-m",
            gguf,
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-c",
            str(max(big) * (prompt + gen)),
            "-npp",
            str(prompt),
            "-ntg",
            str(gen),
            "-npl",
            ",".join(map(str, big)),
        ]
        if "--output-format" in _help(binary):
            cmd += ["--output-format", "jsonl"]
        rows = parse_batched_bench(_check(cmd, timeout=3600))
        by_batch = {int(r["pl"]): r for r in rows if "pl" in r and "speed_tg" in r}
        for b in big:
            if b not in by_batch:
                raise RuntimeError(f"llama-batched-bench printed no row for batch {b}")
            result["decode"][b] = by_batch[b]["speed_tg"]
        result["batched_prefill"] = {b: by_batch[b].get("speed_pp") for b in big}
    return result


def baseline(root: Path = ROOT, **kwargs: Any) -> dict[str, Any] | None:
    """Build (once), convert (once) and ``measure(**kwargs)``; None, with a printed line, if it cannot."""
    bin_dir = ensure_built(root)
    if bin_dir is None:
        return None
    try:
        hf_dir = ensure_hf_model(root)
    except (OSError, ValueError, ImportError) as exc:
        print(f"llama.cpp: skipped, cannot write the Hugging Face folder: {exc}", flush=True)
        return None
    gguf = convert(hf_dir, _work_dir(root) / f"{MODEL_NAME}-f32.gguf", root=root)
    if gguf is None:
        return None
    try:
        return measure(bin_dir, gguf, **kwargs)
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        print(f"llama.cpp: skipped, measuring failed: {exc}", flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--gen", type=int, default=128, help="new tokens per sequence (default 128)")
    parser.add_argument("--batches", default="1,8,32", help="decode batch sizes (default 1,8,32)")
    parser.add_argument("--repetitions", type=int, default=None, help="llama-bench -r (default its own, 5)")
    args = parser.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}", flush=True)
    batches = tuple(int(b) for b in args.batches.split(","))
    result = baseline(
        ROOT,
        threads=args.threads,
        prompt=args.prompt,
        gen=args.gen,
        batches=batches,
        repetitions=args.repetitions,
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if result is None:
        return 1
    print(f"llama.cpp {result['version']}, {result['model']}, {result['threads']} threads, {result['cpu']}")
    print(f"settings: {result['settings']}")
    print(
        f"prefill, batch 1, {args.prompt} tokens: {result['prefill_b1']:.1f} tok/s "
        f"(+- {result['prefill_b1_stddev']:.1f})"
    )
    for b, tps in result["decode"].items():
        where = f"llama-bench, after {result['decode_b1_depth']} tokens" if b == 1 else "llama-batched-bench"
        print(f"decode, batch {b}: {tps:.1f} tok/s ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
