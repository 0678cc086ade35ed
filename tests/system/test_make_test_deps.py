"""`make test` does all its own set-up: the Debian packages the tests drive for real are installed by
`make test-deps`, a prerequisite of `make test`, and `.ci/run` only calls `make test` (so CI and a
newcomer's fresh machine install the same packages the same way)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()

# The programs the tests run, by the Debian package that ships each.
PROGRAMS = {
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "prometheus": "prometheus",
    "promtool": "prometheus",
}


def apt_packages() -> set[str]:
    match = re.search(r"^TEST_APT_PACKAGES\s*:=\s*(.+)$", MAKEFILE, re.M)
    assert match, "the Makefile names no TEST_APT_PACKAGES"
    return set(match.group(1).split())


def prerequisites(target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:(.*)$", MAKEFILE, re.M)
    assert match, f"the Makefile has no target {target!r}"
    return match.group(1).split()


def test_make_test_installs_what_the_tests_run():
    assert "test-deps" in prerequisites("test")
    tests_text = "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name
    )
    for program, package in PROGRAMS.items():
        if program in tests_text:
            assert package in apt_packages(), f"tests run {program} but test-deps does not install {package}"


def test_ci_installs_nothing_of_its_own_and_runs_make_test():
    commands = [
        line.strip() for line in CI_RUN.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "make test" in commands
    assert not any("apt-get" in c or "pip install" in c for c in commands), (
        ".ci/run installs packages itself: put them in the Makefile's test-deps, which make test runs"
    )


def _fake_bin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _test_deps(tmp_path: Path, packages: str, user: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [
        *(user or []),
        "make",
        "-s",
        "-f",
        str(ROOT / "Makefile"),
        "test-deps",
        f"TEST_APT_PACKAGES={packages}",
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_nothing_to_do_when_installed(tmp_path):
    # coreutils is on every Debian machine: nothing is missing, so apt-get is never called.
    _fake_bin(tmp_path, "apt-get", 'echo "apt-get called" >&2; exit 1')
    proc = _test_deps(tmp_path, "coreutils")
    assert proc.returncode == 0, proc.stderr
    assert "apt-get called" not in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to stand for a machine where apt-get works")
def test_a_failed_install_is_one_line_naming_the_packages(tmp_path):
    _fake_bin(tmp_path, "apt-get", "exit 100")
    proc = _test_deps(tmp_path, "no-such-package-gpt2serve coreutils")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("make test-deps:")]
    assert len(errors) == 1 and "apt-get install no-such-package-gpt2serve" in errors[0], proc.stderr
    assert "coreutils" not in errors[0]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as another user"
)
def test_without_root_or_sudo_the_error_names_the_packages(tmp_path):
    tmp_path.chmod(0o777)
    proc = _test_deps(
        tmp_path, "no-such-package-gpt2serve", user=[shutil.which("runuser"), "-u", "nobody", "--"]
    )
    assert proc.returncode != 0
    assert "cannot install the Debian packages no-such-package-gpt2serve" in proc.stderr, proc.stderr
