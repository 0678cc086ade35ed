"""The images, checked without a Docker engine (``make image-test``, deploy/image_test.py, builds
and runs them for real; .ci/run runs it after ``make test``): both Dockerfiles pass hadolint;
their runtime stage has the promised shape (non-root numeric user, port, volume, HEALTHCHECK by
``gpt2-serve healthcheck``, the demo model baked in, the GPU build of the pinned TensorFlow); the
``.dockerignore`` lets in exactly what they copy; and the runtime stage's ``ENV`` + ``CMD`` are run
for real outside Docker — ``gpt2-serve serve`` with the image's variables and a copy of the baked
model folder, probed by the image's HEALTHCHECK command — so the configuration the image ships
does serve."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.settings_flags import env_name
from app.server.settings import Settings
from tests.support.server_harness import free_port, server_process

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile.cuda", ROOT / "deploy" / "Dockerfile.cpu"]


def tool(name: str) -> str:
    """A linter from the test extra (next to this Python), else PATH; fail (not skip) without it."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `make install` (pip install -e '.[test]') brings it"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def runtime_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def image_env(dockerfile: Path) -> dict[str, str]:
    env = {}
    for word, args in runtime_stage(dockerfile):
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    return env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_shape(dockerfile):
    stage = runtime_stage(dockerfile)
    words = dict(stage)
    user = words["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), (
        "numeric non-root user (Kubernetes runAsNonRoot checks it)"
    )
    assert words["EXPOSE"] == "8000" and words["VOLUME"] == '["/app/model_store"]'
    assert words["ENTRYPOINT"] == '["gpt2-serve"]' and words["CMD"] == '["serve"]'
    assert words["HEALTHCHECK"].endswith('CMD ["gpt2-serve", "healthcheck"]')
    assert ("COPY", f"--chown={user} model_store/demo /app/model_store/demo") in stage
    assert ("COPY", "--from=build /opt/venv /opt/venv") in stage
    env = image_env(dockerfile)
    assert env["GPT2_HOST"] == "0.0.0.0" and env["GPT2_PORT"] == "8000"
    assert env["GPT2_MODELS_DIR"] == "/app/model_store" and env["GPT2_MODELS"] == "default"


def test_cuda_image_installs_the_pinned_tensorflow_gpu_build():
    # pyproject's gpu extra, e.g. gpu = ["tensorflow[and-cuda]==2.21.0"]
    version = re.search(
        r'^gpu = \["tensorflow\[and-cuda\]==([\d.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M
    )[1]
    ins = instructions(ROOT / "Dockerfile.cuda")
    assert ("ARG", f"TF_VERSION={version}") in ins
    install = next(args for word, args in ins if word == "RUN" and "and-cuda" in args)
    # The project's other requirements (tensorflow-cpu left out) go in with the CUDA build, in one
    # resolution: tensorflow-cpu, which writes the same `tensorflow` package, is never installed.
    assert install.index("pip install --no-deps .") < install.index(
        'pip install "tensorflow[and-cuda]==${TF_VERSION}" -r /tmp/requirements.txt'
    )
    assert "re.match(r'tensorflow(-cpu)?\\W', r)" in install
    base = next(args for word, args in ins if word == "ARG" and args.startswith("CUDA_BASE="))
    assert base == "CUDA_BASE=nvidia/cuda:12.5.1-base-ubuntu22.04"
    # Any base whose python3 has venv: no path names a Python version; XLA's data dir is a link
    # the build makes to the nvidia-cuda-nvcc wheel wherever site-packages is.
    assert not re.search(r"python3\.\d", " ".join(args for _, args in ins))
    assert image_env(ROOT / "Dockerfile.cuda")["XLA_FLAGS"] == "--xla_gpu_cuda_data_dir=/opt/venv/cuda_nvcc"
    assert 'ln -s "${site#/opt/venv/}/nvidia/cuda_nvcc" /opt/venv/cuda_nvcc' in install


def test_ci_builds_and_runs_the_images_after_the_tests():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.* image-test( |$)", makefile, re.M)
    assert re.search(r"^image-test: .*\n(\t.*\n)*\t\$\(PY\) deploy/image_test.py", makefile, re.M)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make test") < ci.index("make image-test")


def docker_ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern of .dockerignore decides (``!`` lets back in)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_lets_in_exactly_what_the_images_copy():
    for dockerfile in DOCKERFILES:
        for word, args in instructions(dockerfile):
            if word == "COPY" and "--from=" not in args:
                for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                    assert (ROOT / source).exists(), source
                    assert not docker_ignored(source), (
                        f"{dockerfile.name} copies {source}, which .dockerignore drops"
                    )
    assert not docker_ignored("app/server/app.py") and not docker_ignored("model_store/demo/hparams.json")
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "model_store/124M/hparams.json",
        "checkpoint/run1/x",
        "app/__pycache__/x.pyc",
    ):
        assert docker_ignored(kept_out), kept_out


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "healthcheck"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_image_configuration_serves_the_baked_model_and_passes_its_healthcheck(tmp_path):
    """What ``docker run gpt2-serve:cpu`` does, minus Docker: the runtime ENV, the demo model at
    GPT2_MODELS_DIR, ENTRYPOINT + CMD; only the address is loopback and the port a free one."""
    store = tmp_path / "app" / "model_store"
    shutil.copytree(ROOT / "model_store" / "demo", store / "demo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPT2_")}
    env.update(image_env(ROOT / "deploy" / "Dockerfile.cpu"))
    env.update(
        GPT2_HOST="127.0.0.1",
        GPT2_PORT=str(port),
        GPT2_MODELS_DIR=str(store),
        GPT2_WARMUP="false",
        GPT2_SLOTS="2",
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def healthy(_client) -> bool | str:  # the image's HEALTHCHECK is the readiness probe
        proc = healthcheck(env)
        return proc.returncode == 0 or proc.stdout

    with server_process(
        [sys.executable, "-m", "app.cli.main", "serve"],
        port=port,
        env=env,
        cwd=tmp_path,
        ready=healthy,
        ready_timeout=120,
        poll=0.5,
        log=tmp_path / "server.log",
    ) as server:
        proc = healthcheck(env)
        assert proc.returncode == 0 and proc.stdout.strip() == "healthy"
        # The GPU image's promise: a GPU asked for but not used is unhealthy, with the reason.
        proc = healthcheck({**env, "CUDA_VISIBLE_DEVICES": "0"})
        assert proc.returncode == 1
        assert proc.stdout.startswith(
            "unhealthy: GPU asked for (CUDA_VISIBLE_DEVICES=0) but every model runs on the CPU: "
        )
        assert "CPU-only build" in proc.stdout
    assert server.proc.returncode == 0
    proc = healthcheck(env)
    assert proc.returncode == 1 and "no answer" in proc.stdout


def readme_docker_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return [line.split() for line in lines if line.startswith(("docker build", "docker run"))]


def test_readme_docker_commands_match_the_dockerfiles():
    """The README's commands as a user pastes them: each build names a Dockerfile that exists and
    the context the .dockerignore is written for; each run uses a tag built above, the image's
    port and volume, and a subcommand the image's `gpt2-serve` has."""
    from app.cli.main import build_parser

    commands = readme_docker_commands()
    builds = {c[c.index("-t") + 1]: c[c.index("-f") + 1] for c in commands if c[1] == "build"}
    assert builds == {"gpt2-serve:gpu": "Dockerfile.cuda", "gpt2-serve:cpu": "deploy/Dockerfile.cpu"}
    assert all(c[-1] == "." for c in commands if c[1] == "build")
    issue = "docker run --gpus all -p 8000:8000 -v $PWD/model_store:/app/model_store -e GPT2_MODELS=124M,355M gpt2-serve:gpu"
    assert issue.split() in commands
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    runs = [c for c in commands if c[1] == "run"]
    assert len(runs) >= 5
    for c in runs:
        image = next(word for word in c if word.startswith("gpt2-serve:"))
        dockerfile = ROOT / builds[image]
        words = dict(runtime_stage(dockerfile))
        for i, word in enumerate(c):
            if word == "-p":
                assert c[i + 1].split(":")[1] == words["EXPOSE"]
            if word == "-v":
                assert f'["{c[i + 1].split(":")[1]}"]' == words["VOLUME"]
            if word == "-e":
                assert c[i + 1].split("=")[0] in {env_name(f) for f in Settings.model_fields}
        rest = c[c.index(image) + 1 :]
        assert not rest or rest[0] in subcommands, rest
