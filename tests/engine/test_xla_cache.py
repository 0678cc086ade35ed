"""XLA's compiled programs kept across restarts (issue 18 §5), and never trusted blindly: files a
finished warm-up did not vouch for are deleted before TensorFlow can read them (a corrupt one
fails the call that reads it: OutOfRangeError, seen on this machine)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from app.engine import xla_cache
from tests.support.server_harness import serve_process


def test_only_files_a_finished_warmup_vouched_for_are_kept(tmp_path, caplog):
    good, changed, stray = (tmp_path / f"{n}.pb" for n in ("good", "changed", "stray"))
    good.write_bytes(b"program one")
    changed.write_bytes(b"program two")
    xla_cache.seal(tmp_path)
    changed.write_bytes(b"program two, cut sh")
    stray.write_bytes(b"written by a process that crashed")
    with caplog.at_level(logging.WARNING, logger="app.engine.xla_cache"):
        assert xla_cache.prepare(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.glob("*.pb")) == ["good.pb"]
    assert (
        "changed since it was checked" in caplog.text and "not checked by a finished warm-up" in caplog.text
    )

    (tmp_path / xla_cache.MANIFEST).write_text("{oops")
    with caplog.at_level(logging.WARNING, logger="app.engine.xla_cache"):
        assert xla_cache.prepare(tmp_path) == 0
    assert "unreadable manifest" in caplog.text and not list(tmp_path.glob("*.pb"))


def test_enable_sets_the_flag_once_and_a_folder_per_tensorflow_and_cpu(tmp_path):
    env = {"TF_XLA_FLAGS": "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/old"}
    where = xla_cache.folder(tmp_path)
    assert where.parent == tmp_path and where.name.startswith("xla-tf")
    assert xla_cache.enable(where, env)
    assert env["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory={where}"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not xla_cache.enable(blocker / "xla", {})


@pytest.mark.system
def test_a_restart_reads_the_programs_and_a_corrupt_one_is_compiled_again(tiny_dirs, tmp_path):
    flags = (
        "--warmup",
        "--slots",
        "2",
        "--prefill-chunk",
        "32",
        "--kernels",
        "xla",
        "--cache-dir",
        str(tmp_path),
    )
    with serve_process(tiny_dirs["openai"], *flags, log=tmp_path / "first.log"):
        pass
    (cache,) = tmp_path.glob("xla-tf*")
    programs = sorted(cache.glob("*.pb"))
    assert len(programs) >= 10 and (cache / xla_cache.MANIFEST).exists()
    programs[0].write_bytes(b"garbage")  # TensorFlow would fail the call that reads it
    log = tmp_path / "second.log"
    with serve_process(tiny_dirs["openai"], *flags, log=log) as srv:
        r = httpx.post(
            f"{srv.url}/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 5}}, timeout=60
        )
        assert r.status_code == 200
    assert f"XLA cache: ignoring {programs[0]} (changed since it was checked)" in Path(log).read_text()
    assert programs[0].exists() and programs[0].read_bytes() != b"garbage"  # compiled and written again
    # Every program of the second start was one of the first's (traced in the same order, so named
    # the same): read from the cache, none compiled under a new name.
    assert sorted(p.name for p in cache.glob("*.pb")) == [p.name for p in programs]
