"""`make image-test`: both Dockerfiles built on a local Debian base and run for real.

1. A Docker engine: the one ``DOCKER_HOST`` or the default socket reaches, else a dockerd of its own
   in a temporary folder (vfs storage, no bridge, no iptables: it runs where overlayfs and netfilter
   do not), stopped and deleted at the end, also on failure. Builds use the classic builder
   (Debian's docker.io has no buildx) and ``--network=host``; containers run on the host's network.
2. A base image: no image registry is reachable, so Debian bookworm made by debootstrap (minbase,
   python3, python3-venv, ca-certificates), cached in ~/.cache/gpt2-serve, with the host's CA bundle
   and /etc/pip.conf copied in so the build reaches the package registries the host reaches.
3. deploy/Dockerfile.cpu and Dockerfile.cuda built on it (``PYTHON_BASE``, ``CUDA_BASE``), timed
   and sized.
4. Each image run and checked. A failed check says what, with the container's last log lines; the
   exit status is 1 when any failed.

CPU image: ready; ``POST /generate`` and the WebSocket answer; the server runs as uid 10001; a named
volume starts as a copy of the demo model and the user can write in it; a bind-mounted model folder
is served; the HEALTHCHECK turns healthy; ``docker stop`` drains streams in flight and exits 0.
CUDA image (no GPU here): TensorFlow's CUDA build imports; the CUDA and cuDNN libraries it opens are
found from its RUNPATH, load, and ``ldd`` resolves them; ``XLA_FLAGS``' data dir has ptxas and
libdevice; with ``CUDA_VISIBLE_DEVICES=0`` the server serves on the CPU while ``gpt2-serve
devices`` and the HEALTHCHECK give the one-line reason (no NVIDIA driver).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from app.client.process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
T0 = time.monotonic()
NAME = "gpt2-serve-it"  # prefix of the containers and volumes a run makes (removed at the end)
SUITE, BASE_PACKAGES = "bookworm", "python3,python3-venv,ca-certificates"
CA_BUNDLE, PIP_CONF = "etc/ssl/certs/ca-certificates.crt", "etc/pip.conf"
UID = "10001"
DEMO_FILES = sorted(p for p in (ROOT / "model_store" / "demo").iterdir() if p.is_file())


def say(message: str) -> None:
    print(f"[{time.monotonic() - T0:5.0f} s] {message}", flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


class Failed(Exception):
    """What was expected, and what came instead."""


class Engine:
    """The Docker engine of the run: a reachable one, or a dockerd this run starts (and stops)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        self.dockerd: subprocess.Popen | None = None
        self.cleanup: list[tuple[str, ...]] = []  # docker commands that undo what the run made
        self.data_root: Path = workdir  # the filesystem its layers fill (the engine's, when local)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, **kw
    ) -> subprocess.CompletedProcess:
        if "input" not in kw and "stdin" not in kw:
            kw["stdin"] = subprocess.DEVNULL
        proc = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and proc.returncode != 0:
            raise Failed(
                f"`docker {' '.join(args)[:200]}` exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"
            )
        return proc

    def reachable(self) -> bool:
        try:
            proc = self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    def start(self) -> None:
        if not shutil.which("docker"):
            raise Failed("no docker command: apt-get install docker.io (make image-test does)")
        if self.reachable():
            say(f"Docker engine: the one reachable at {self.env.get('DOCKER_HOST', 'the default socket')}")
            root = Path(self.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip())
            self.data_root = root if root.is_dir() else self.workdir
            return
        if not shutil.which("dockerd") or os.geteuid() != 0:
            raise Failed("no Docker engine reachable, and starting one needs dockerd (docker.io) and root")
        home = self.workdir / "dockerd"
        home.mkdir()
        log = open(home / "dockerd.log", "w")  # noqa: SIM115 - dockerd writes it until stop()
        self.dockerd = subprocess.Popen(
            ["dockerd", "--storage-driver=vfs", "--iptables=false", "--bridge=none",
             f"--data-root={home}/data", f"--exec-root={home}/exec", f"--pidfile={home}/dockerd.pid",
             f"--host=unix://{home}/docker.sock"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.env["DOCKER_HOST"] = f"unix://{home}/docker.sock"
        self.data_root = home
        deadline = time.monotonic() + 90
        while not self.reachable():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"dockerd did not start; {home}/dockerd.log ends:\n{tail(home / 'dockerd.log')}")
            time.sleep(1)
        say(f"Docker engine: a dockerd of this run (vfs storage) in {home}")

    def undo(self) -> None:
        """Removes the containers and volumes the run made so far."""
        for args in reversed(self.cleanup):
            try:
                self.docker(*args, check=False, timeout=300)
            except subprocess.TimeoutExpired:
                say(f"docker {' '.join(args)} timed out")
        self.cleanup.clear()

    def tidy(self, image: str, keep_image: bool) -> None:
        """After an image's checks: its containers and volumes go; on a dockerd of this run the image
        and the build's intermediate images go too (vfs stores every layer whole: the CUDA build
        needs the room), and the free space is printed."""
        self.undo()
        if self.dockerd is not None and not keep_image:
            self.docker("rmi", image, check=False)
            self.docker("image", "prune", "-f", check=False, timeout=600)
        say(f"disk: {shutil.disk_usage(self.workdir).free / 1e9:.0f} GB free in {self.workdir}")

    def stop(self) -> None:
        self.undo()
        if self.dockerd is None:
            return
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(120)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait()
        say("dockerd stopped")


def debian_base(engine: Engine, cache: Path) -> str:
    """The base image's name: Debian made by debootstrap once (cached), with the host's CA bundle and
    pip configuration, imported into the engine unless it has it already."""
    root = cache / f"debian-{SUITE}-minbase-python3"
    if not (root / "usr/bin/python3").exists():
        if not shutil.which("debootstrap") or os.geteuid() != 0:
            raise Failed("making the Debian base needs debootstrap and root (apt-get install debootstrap)")
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log, started = engine.workdir / "debootstrap.log", time.monotonic()
        say(f"base: debootstrap --variant=minbase --include={BASE_PACKAGES} {SUITE} (log: {log})")
        with open(log, "w") as out:
            cmd = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(partial)]
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise Failed(f"debootstrap failed; its log ends:\n{tail(log)}")
        for junk in [*partial.glob("var/cache/apt/archives/*.deb"), *partial.glob("var/lib/apt/lists/*_*")]:
            junk.unlink()
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        say(f"base: made in {time.monotonic() - started:.0f} s, cached in {root}")
    digest = hashlib.sha256(BASE_PACKAGES.encode())
    for rel in (CA_BUNDLE, PIP_CONF):
        host, inside = Path("/") / rel, root / rel
        if host.is_file():
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host, inside)
            digest.update(rel.encode() + host.read_bytes())
        elif rel == PIP_CONF:
            inside.unlink(missing_ok=True)
    name = f"gpt2-serve-base:{SUITE}-{digest.hexdigest()[:12]}"
    if engine.docker("image", "inspect", name, check=False).returncode != 0:
        excludes = [f"--exclude=./{d}/*" for d in ("dev", "proc", "sys")]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", *excludes, "."], stdout=subprocess.PIPE)
        engine.docker("import", "-", name, stdin=tar.stdout)
        tar.wait()
    return name


@contextlib.contextmanager
def lowest_free(path: Path, every: float = 2.0):
    """Samples the free space of ``path``'s filesystem while the block runs; yields a list that holds
    the lowest figure (bytes) once the block is done."""
    lowest, done = [shutil.disk_usage(path).free], threading.Event()

    def sample() -> None:
        while not done.wait(every):
            lowest[0] = min(lowest[0], shutil.disk_usage(path).free)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lowest
    finally:
        done.set()
        sampler.join()
        lowest[0] = min(lowest[0], shutil.disk_usage(path).free)


def build(engine: Engine, dockerfile: str, tag: str, build_args: dict[str, str]) -> str:
    """How long ``docker build`` took, the image's size and the most disk the build took; its steps
    are printed as they start."""
    cmd = ["docker", "build", "--network=host", "-f", str(ROOT / dockerfile), "-t", tag]
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    log, started = engine.workdir / f"build-{tag.replace(':', '-')}.log", time.monotonic()
    say(f"build {dockerfile} as {tag} (log: {log})")
    free_before = shutil.disk_usage(engine.data_root).free
    with open(log, "w") as out, lowest_free(engine.data_root) as lowest:
        proc = subprocess.Popen(
            [*cmd, str(ROOT)], env=engine.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Step "):
                say(f"  {line.strip()[:140]}")
        if proc.wait() != 0:
            raise Failed(f"docker build -f {dockerfile} failed; its log ends:\n{tail(log, 40)}")
    seconds = time.monotonic() - started
    peak = (free_before - lowest[0]) / 1e9
    say(
        f"disk: the build took up to {peak:.1f} GB in {engine.data_root} ({lowest[0] / 1e9:.0f} GB free at the lowest)"
    )
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    result = f"in {seconds / 60:.1f} min, {size / 1e9:.2f} GB ({size / 2**20:.0f} MiB)"
    say(f"built {tag} {result}; its layers of 1 MB or more:")
    history = engine.docker("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", tag).stdout
    for line in history.splitlines():
        layer, created_by = line.split("\t", 1)
        if re.fullmatch(r"[\d.]+[MG]B", layer):
            print(f"    {layer:>8}  {' '.join(created_by.split())[:110]}", flush=True)
    return result


class Container:
    """A ``docker run -d`` of an image on the host's network, on a free port; removed at the end."""

    def __init__(self, engine: Engine, name: str, image: str, env: dict | None = None, volume: str = ""):
        self.engine, self.name, self.port = engine, f"{NAME}-{name}", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        engine.docker("rm", "-f", "-v", self.name, check=False)
        args = ["run", "-d", "--name", self.name, "--network=host", "-e", f"GPT2_PORT={self.port}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        if volume:
            args += ["-v", volume]
        started = time.monotonic()
        engine.cleanup.append(("rm", "-f", "-v", self.name))
        engine.docker(*args, image)
        self.started = time.monotonic()
        say(f"docker run {name}: created and started in {self.started - started:.1f} s")

    def logs(self, lines: int = 30) -> str:
        proc = self.engine.docker("logs", "--tail", str(lines), self.name, check=False)
        return (proc.stdout + proc.stderr).rstrip()

    def inspect(self, template: str) -> str:
        return self.engine.docker("inspect", "--format", template, self.name).stdout.strip()

    def exec(self, *cmd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        if stdin is None:
            return self.engine.docker("exec", self.name, *cmd, check=False)
        return self.engine.docker("exec", "-i", self.name, *cmd, check=False, input=stdin)

    def wait_ready(self, timeout: float = 300) -> str:
        def stopped() -> str | None:
            state = self.inspect("{{.State.Status}} (exit code {{.State.ExitCode}})")
            return None if state.startswith("running") else state

        try:
            with httpx.Client(base_url=self.url, timeout=5) as client:
                wait_ready(client, timeout=timeout, stopped=stopped, poll=1)
        except (RuntimeError, TimeoutError) as exc:
            raise Failed(str(exc)) from None
        return f"{time.monotonic() - self.started:.0f} s after docker run"


class Checks:
    """Runs checks, each titled; a failure is printed with the container's last log lines."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, title: str, check, container: Container | None = None) -> bool:
        started = time.monotonic()
        try:
            detail = check()
        except Exception as exc:  # a check's own error counts as its failure, with what it was
            self.failed.append(title)
            say(f"FAIL {title}: {exc if isinstance(exc, Failed) else repr(exc)}")
            if container is not None:
                print(f"  last log lines of {container.name}:", flush=True)
                print("    " + container.logs().replace("\n", "\n    "), flush=True)
            return False
        say(f"ok   {title} ({time.monotonic() - started:.1f} s){': ' + detail if detail else ''}")
        return True


def generate(c: Container, model: str = "") -> str:
    params = {"max_new_tokens": 12, "do_sample": True, "seed": 1, "details": True}
    r = httpx.post(f"{c.url}/generate", json={"inputs": "Romeo.", "parameters": params}, timeout=120)
    if r.status_code != 200:
        raise Failed(f"POST /generate answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    if body["details"]["generated_tokens"] != 12 or not isinstance(body["generated_text"], str):
        raise Failed(f"POST /generate: not 12 generated tokens: {body}")
    return f"{body['generated_text'][:40]!r}"


def ws_request(ws, tokens: int, seed: int = 1) -> None:
    params = {"max_new_tokens": tokens, "do_sample": True, "seed": seed}
    ws.send(json.dumps({"type": "generate", "id": f"q{seed}", "inputs": "Romeo.", "parameters": params}))


def ws_finish(ws, tokens: int, texts: list[str], eos: bool = False) -> dict:
    """Reads a stream to its end: ``done`` after every token asked for (or, with ``eos``, after the
    model's end-of-text: the demo model writes one now and then), else Failed."""
    while (msg := json.loads(ws.recv(timeout=120)))["type"] == "token":
        texts.append(msg["text"])
    ended = msg["type"] == "done" and (
        (msg["finish_reason"] == "length" and len(texts) == tokens)
        or (eos and msg["finish_reason"] == "eos_token" and len(texts) <= tokens)
    )
    if not ended:
        raise Failed(f"the stream ended with {str(msg)[:300]} after {len(texts)} of {tokens} tokens")
    if msg["generated_text"] != "".join(texts):
        raise Failed("the tokens' texts do not add up to generated_text")
    return msg


def websocket(c: Container) -> str:
    with connect(f"ws://127.0.0.1:{c.port}/stream", open_timeout=10) as ws:
        ws_request(ws, 12)
        texts: list[str] = []
        ws_finish(ws, 12, texts)
    return f"12 token messages, then done: {''.join(texts)[:40]!r}"


def non_root(c: Container) -> str:
    user = c.inspect("{{.Config.User}}")
    status = c.exec("cat", "/proc/1/status").stdout
    uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
    if not uids or set(uids) != {UID}:
        raise Failed(
            f"the server (pid 1) runs with uids {uids or '?'}, not {UID}; the image's USER is {user!r}"
        )
    return f"USER {user}, pid 1 uid {uids[0]}"


def named_volume(c: Container, volume: str) -> str:
    mounts = json.loads(c.inspect("{{json .Mounts}}"))
    if not any(m.get("Name") == volume and m["Destination"] == "/app/model_store" for m in mounts):
        raise Failed(f"the volume {volume} is not mounted at /app/model_store: {mounts}")
    listing = c.exec("stat", "-c", "%u %n", *[f"/app/model_store/demo/{p.name}" for p in DEMO_FILES])
    if listing.returncode != 0:
        raise Failed(f"the demo model is not in the volume: {listing.stderr.strip()}")
    owners = {line.split()[0] for line in listing.stdout.splitlines()}
    if owners != {UID}:
        raise Failed(f"the demo model's files in the volume belong to {owners}, not {UID}")
    if c.exec("test", "-w", "/app/model_store").returncode != 0:
        owner = c.exec("stat", "-c", "%U:%G %a", "/app/model_store").stdout.strip()
        raise Failed(
            f"the user cannot write in the volume (/app/model_store is {owner}): `download` into it fails"
        )
    return f"the demo's {len(DEMO_FILES)} files, owned by {UID}, and /app/model_store is writable"


def bind_mount(c: Container) -> str:
    models = httpx.get(f"{c.url}/models", timeout=30).json()["models"]
    states = {m["name"]: m["state"] for m in models}
    if states != {"mine": "ready"}:
        raise Failed(f"GET /models: {states}, expected the bind-mounted model `mine` ready")
    return f"GET /models: {states}; POST /generate: {generate(c)}"


def healthy(c: Container, timeout: float = 300) -> str:
    """Waits for ``healthy``: here it came 105-123 s after ``docker run`` (ready at ~40 s, probes every
    30 s, each a Python start); the limit leaves room for a slower machine."""
    while True:
        health = json.loads(c.inspect("{{json .State.Health}}"))
        if health is None:
            raise Failed("the image has no HEALTHCHECK (State.Health is null)")
        probes = [f"exit {p['ExitCode']}: {p['Output'].strip()[:200]}" for p in health.get("Log") or []]
        if health["Status"] == "healthy":
            return f"{time.monotonic() - c.started:.0f} s after docker run; last probe {probes[-1]}"
        if time.monotonic() - c.started > timeout:
            raise Failed(
                f"State.Health.Status is {health['Status']!r} after {timeout:.0f} s; probes: {probes}"
            )
        time.sleep(2)


def drain(c: Container, streams: int = 4, tokens: int = 200) -> str:
    """Streams in flight when ``docker stop`` sends SIGTERM run to their end; the server exits 0."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(f"ws://127.0.0.1:{c.port}/stream", open_timeout=10))
            for _ in range(streams)
        ]
        texts: list[list[str]] = [[] for _ in sockets]
        for i, ws in enumerate(sockets):
            ws_request(ws, tokens, seed=i + 1)
        for ws, t in zip(sockets, texts):
            msg = json.loads(ws.recv(timeout=60))
            if msg["type"] != "token":
                raise Failed(f"a stream began with {msg}")
            t.append(msg["text"])
        stop: dict = {}

        def docker_stop() -> None:
            started = time.monotonic()
            stop["proc"] = c.engine.docker("stop", "-t", "60", c.name, check=False, timeout=120)
            stop["seconds"] = time.monotonic() - started

        stopper = threading.Thread(target=docker_stop)
        stopper.start()
        before = sum(len(t) for t in texts)
        try:
            for ws, t in zip(sockets, texts):
                ws_finish(ws, tokens, t, eos=True)
        finally:
            stopper.join()
    logs = c.logs(200)
    exit_code = c.inspect("{{.State.ExitCode}}")
    if stop["proc"].returncode != 0 or exit_code != "0":
        raise Failed(f"docker stop exited {stop['proc'].returncode}, the container {exit_code}")
    drained = re.search(r"draining: .* for (\d+) request\(s\) in flight", logs)
    if not drained or int(drained[1]) == 0 or "drained: every accepted request has finished" not in logs:
        raise Failed(f"the server did not report draining a request in flight: {drained and drained[0]}")
    return (
        f"{streams} streams of up to {tokens} tokens ({before} tokens received before docker stop, "
        f"{sum(len(t) for t in texts)} in all) finished, "
        f"log: {drained[1]} request(s) in flight at SIGTERM; docker stop took {stop['seconds']:.1f} s, exit 0"
    )


def space(c: Container) -> str:
    du = c.exec(
        "sh", "-c", "du -sm /opt/venv/lib/python3*/site-packages/* /app/model_store | sort -rn | head -6"
    )
    return ", ".join(
        f"{line.split()[1].split('site-packages/')[-1]} {line.split()[0]} MB"
        for line in du.stdout.splitlines()
    )


def check_cpu(engine: Engine, image: str, checks: Checks) -> None:
    volume = f"{NAME}-models"
    engine.docker("volume", "rm", "-f", volume, check=False)
    engine.docker("volume", "create", volume)
    engine.cleanup.append(("volume", "rm", "-f", volume))
    c = Container(engine, "cpu", image, volume=f"{volume}:/app/model_store")
    if not checks("cpu: ready (GET /ready 200)", c.wait_ready, c):
        return
    checks("cpu: POST /generate answers", lambda: generate(c), c)
    checks("cpu: the WebSocket streams", lambda: websocket(c), c)
    checks(f"cpu: the server runs as uid {UID}, not root", lambda: non_root(c), c)
    checks("cpu: a named volume starts as a copy of the demo model", lambda: named_volume(c, volume), c)
    checks("cpu: what takes the space", lambda: space(c))
    bind = engine.workdir / "bind-models"
    shutil.copytree(ROOT / "model_store" / "demo", bind / "mine")
    b = Container(engine, "cpu-bind", image, env={"GPT2_MODELS": "mine"}, volume=f"{bind}:/app/model_store")
    if checks("cpu: with a bind-mounted model folder: ready", b.wait_ready, b):
        checks("cpu: the bind-mounted model is served", lambda: bind_mount(b), b)
    engine.docker("rm", "-f", b.name, check=False)
    checks("cpu: the HEALTHCHECK reports healthy", lambda: healthy(c), c)
    checks("cpu: docker stop drains the streams in flight and exits 0", lambda: drain(c), c)


def check_cuda(engine: Engine, image: str, checks: Checks) -> None:
    c = Container(engine, "gpu", image, env={"CUDA_VISIBLE_DEVICES": "0"})
    probe: dict = {}

    def run_probe() -> str:
        proc = c.exec("python", "-", stdin=(ROOT / "deploy" / "cuda_probe.py").read_text())
        if proc.returncode != 0:
            raise Failed(f"the probe failed: {proc.stderr.strip()[-1500:]}")
        probe.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        info = probe["build_info"]
        if info.get("is_cuda_build") != "True":
            raise Failed(f"tf.sysconfig.get_build_info() is not a CUDA build: {info}")
        return f"Python {probe['python']}, import {probe['import_seconds']} s, CUDA {info.get('cuda_version')}, cuDNN {info.get('cudnn_version')}"

    def libraries() -> str:
        bad = {
            n: r
            for n, r in probe["libraries"].items()
            if not r["found"] or r["loads"] is not True or r["unresolved"]
        }
        if bad:
            raise Failed(
                f"CUDA/cuDNN libraries TensorFlow opens, not found on its RUNPATH or not loading: {bad}"
            )
        rows = probe["libraries"].items()
        return "; ".join(
            f"{n} <- {r['found'].split('site-packages/')[-1]} (RUNPATH of {r['via']})" for n, r in rows
        )

    def xla() -> str:
        if not probe["xla_data_dir"] or not probe["ptxas"] or not probe["libdevice"]:
            raise Failed(
                f"XLA_FLAGS' data dir {probe['xla_data_dir']!r}: ptxas {probe.get('ptxas')!r}, libdevice.10.bc {probe.get('libdevice')}"
            )
        return f"{probe['xla_data_dir']}: {probe['ptxas']}; nvvm/libdevice/libdevice.10.bc"

    def devices() -> str:
        proc = c.exec("gpt2-serve", "devices")
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
        want = "GPU asked for (CUDA_VISIBLE_DEVICES=0) but TensorFlow sees none: no NVIDIA driver"
        if proc.returncode != 1 or not last.startswith(want):
            raise Failed(f"gpt2-serve devices exited {proc.returncode}, last line {last!r}")
        return last

    def on_cpu() -> str:
        models = httpx.get(f"{c.url}/models", timeout=30).json()["models"]
        if [m["device"] for m in models] != ["/CPU:0"]:
            raise Failed(f"GET /models: {[(m['name'], m['device']) for m in models]}")
        proc = c.exec("gpt2-serve", "healthcheck")
        want = "unhealthy: GPU asked for (CUDA_VISIBLE_DEVICES=0) but every model runs on the CPU: no NVIDIA driver"
        if proc.returncode != 1 or not proc.stdout.startswith(want):
            raise Failed(f"gpt2-serve healthcheck exited {proc.returncode}: {proc.stdout.strip()!r}")
        return (
            f"the model on /CPU:0, POST /generate {generate(c)}; healthcheck: {proc.stdout.strip()[:90]}..."
        )

    if not checks("cuda: ready with CUDA_VISIBLE_DEVICES=0 (GET /ready 200)", c.wait_ready, c):
        return
    if checks("cuda: TensorFlow's CUDA build imports", run_probe, c):
        checks("cuda: the CUDA and cuDNN libraries it opens are found and load", libraries, c)
        checks("cuda: XLA_FLAGS' data dir holds ptxas and libdevice", xla, c)
    checks("cuda: gpt2-serve devices gives its reason for no GPU", devices, c)
    checks("cuda: the server serves on the CPU; the healthcheck says why", on_cpu, c)
    checks(f"cuda: the server runs as uid {UID}, not root", lambda: non_root(c), c)
    checks("cuda: what takes the space", lambda: space(c))


def unmount_under(path: Path) -> None:
    """Anything still mounted under ``path`` (a dockerd that died mid-run) is unmounted before the
    folder is deleted, so the deletion cannot reach through a bind mount."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["cpu", "cuda"], help="build and check one image")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-serve",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs) and a dockerd's data"
    )
    args = p.parse_args()
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: the finally below stops a dockerd of
    # this run and deletes its folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Layers of several GB each with vfs: a disk folder, not a tmpfs /tmp.
    workdir = Path(tempfile.mkdtemp(prefix="gpt2-it-", dir=os.environ.get("IMAGE_TEST_TMP", "/var/tmp")))
    engine, checks, built = Engine(workdir), Checks(), []
    try:
        engine.start()
        say(f"disk: {shutil.disk_usage(workdir).free / 1e9:.0f} GB free in {workdir}")
        base = debian_base(engine, args.cache)
        say(f"base image: {base}")
        for kind, dockerfile, arg, check in (
            ("cpu", "deploy/Dockerfile.cpu", "PYTHON_BASE", check_cpu),
            ("cuda", "Dockerfile.cuda", "CUDA_BASE", check_cuda),
        ):
            if args.only not in (None, kind):
                continue
            try:
                built.append(f"{kind} {build(engine, dockerfile, f'{NAME}:{kind}', {arg: base})}")
                check(engine, f"{NAME}:{kind}", checks)
            except Failed as exc:  # a failed build or docker run: the other image is still tried
                checks.failed.append(f"{kind}: {str(exc).splitlines()[0][:120]}")
                say(f"FAIL {kind}: {exc}")
            finally:
                engine.tidy(f"{NAME}:{kind}", keep_image=args.keep)
    except Failed as exc:
        checks.failed.append(str(exc).splitlines()[0])
        say(f"FAIL {exc}")
    finally:
        engine.stop()
        if args.keep:
            say(f"kept {workdir}")
        else:
            unmount_under(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
    say(f"built: {'; '.join(built) or 'nothing'}; total {(time.monotonic() - T0) / 60:.1f} min")
    if checks.failed:
        say(f"image-test FAILED: {'; '.join(checks.failed)}")
        return 1
    say("image-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
