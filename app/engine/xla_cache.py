"""XLA's compiled programs kept across restarts (TensorFlow's persistent compilation cache).

TensorFlow writes every XLA executable it compiles into ``--tf_xla_persistent_cache_directory``
(one ``.pb`` file per program, named by the program's fingerprint) and reads it back instead of
compiling when the same program comes again. Measured at 124M with 4 slots on 2 AMD cores: warm-up
of 48 programs 55.6 s cold, 36.6 s from the cache (the rest is tracing, which no cache saves).

TensorFlow trusts those files: a truncated or foreign one fails the call that reads it
(``OutOfRangeError``), and a program compiled for another CPU's instructions could crash the
process. So this module keeps the cache safe to reuse:

* the folder is keyed by the TensorFlow version and the CPU (model name and flags):
  ``<root>/xla-tf<version>-<cpu digest>``; another machine or version gets its own;
* :func:`seal` writes a manifest (size and SHA-256 of every file) after a warm-up that succeeded;
  :func:`prepare` deletes, with a warning, every file the manifest does not vouch for (a write cut
  short by a crash, a corrupted or foreign file) before TensorFlow can read it;
* :func:`wipe` empties it: the registry does so and warms up again when a warm-up fails with it.

The flag must be in ``TF_XLA_FLAGS`` before TensorFlow reads its XLA flags (its first compile),
so :func:`enable` runs at the start of ``serve``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path

from app.engine import kernels

log = logging.getLogger(__name__)

FLAG = "--tf_xla_persistent_cache_directory"
MANIFEST = "manifest.json"


def _tf_version() -> str:
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def folder(root: Path) -> Path:
    """The cache folder for this TensorFlow and this CPU under ``root``."""
    model, flags = kernels.cpu_info()
    digest = hashlib.sha256(json.dumps([model, flags]).encode()).hexdigest()[:12]
    return Path(root) / f"xla-tf{_tf_version()}-{digest}"


def enable(path: Path, environ: dict | None = None) -> bool:
    """Point TensorFlow's persistent XLA cache at ``path`` (made safe first: :func:`prepare`).
    False, with a warning, when the folder cannot be made (serving goes on without a cache)."""
    env = os.environ if environ is None else environ
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no XLA compilation cache: cannot make %s (%s)", path, exc)
        return False
    prepare(path)
    flags = [f for f in env.get("TF_XLA_FLAGS", "").split() if not f.startswith(FLAG)]
    env["TF_XLA_FLAGS"] = " ".join([*flags, f"{FLAG}={path}"])
    return True


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads((path / MANIFEST).read_text())
        return {str(k): str(v) for k, v in data["files"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("XLA cache %s: unreadable manifest (%s); its programs are compiled again", path, exc)
        return {}


def prepare(path: Path) -> int:
    """Delete every program file that the manifest does not vouch for; the number kept."""
    vouched = _manifest(path)
    kept = 0
    for entry in sorted(path.glob("*.pb")):
        try:
            if vouched.get(entry.name) == _digest(entry):
                kept += 1
                continue
            why = (
                "changed since it was checked"
                if entry.name in vouched
                else "not checked by a finished warm-up"
            )
            log.warning("XLA cache: ignoring %s (%s)", entry, why)
            entry.unlink()
        except OSError as exc:
            log.warning("XLA cache: cannot check %s (%s)", entry, exc)
    return kept


def seal(path: Path) -> None:
    """Vouch for the programs now in ``path`` (call after a warm-up that succeeded)."""
    try:
        files = {p.name: _digest(p) for p in sorted(path.glob("*.pb"))}
        tmp = path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"tensorflow": _tf_version(), "files": files}, indent=0, sort_keys=True))
        tmp.replace(path / MANIFEST)
    except OSError as exc:
        log.warning(
            "XLA cache: cannot write the manifest in %s (%s); the next start compiles again", path, exc
        )


def wipe(path: Path) -> None:
    for entry in path.glob("*"):
        try:
            entry.unlink()
        except OSError as exc:
            log.warning("XLA cache: cannot remove %s (%s)", entry, exc)


def active() -> Path | None:
    """The cache folder TensorFlow was pointed at, if any."""
    for flag in os.environ.get("TF_XLA_FLAGS", "").split():
        if flag.startswith(FLAG + "="):
            return Path(flag.split("=", 1)[1])
    return None
