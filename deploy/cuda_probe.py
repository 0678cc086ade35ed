"""Run inside the CUDA image by deploy/image_test.py (`docker exec -i C python - < this`; no GPU
needed). Prints one JSON object: TensorFlow's build info; for each CUDA/cuDNN library TensorFlow
opens (app.cli.gpu_diagnosis.CUDA_LIBRARIES), where the loader finds it from the RUNPATH of
TensorFlow's own libraries (what its dlopen searches), whether it loads, and what ``ldd`` leaves
unresolved; and XLA's CUDA data dir (``XLA_FLAGS``) with its ptxas and libdevice."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

SHT_DYNAMIC, DT_RPATH, DT_RUNPATH = 6, 15, 29


def runpath(lib: Path) -> list[str]:
    """The DT_RUNPATH (or DT_RPATH) directories of an ELF64 little-endian library, $ORIGIN expanded."""
    with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as elf:
        (shoff,) = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
        for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
            if kind != SHT_DYNAMIC:
                continue
            strtab = sections[link][4]
            for i in range(0, size, 16):
                tag, value = struct.unpack_from("<qQ", elf, offset + i)
                if tag in (DT_RPATH, DT_RUNPATH):
                    end = elf.find(b"\0", strtab + value)
                    paths = elf[strtab + value : end].decode()
                    return [p.replace("$ORIGIN", str(lib.parent)) for p in paths.split(":") if p]
    return []


def main() -> dict:
    t = time.monotonic()
    import tensorflow as tf

    from app.cli.gpu_diagnosis import CUDA_LIBRARIES

    out: dict = {"python": sys.version.split()[0], "import_seconds": round(time.monotonic() - t, 1)}
    out["build_info"] = {k: str(v) for k, v in tf.sysconfig.get_build_info().items()}
    tf_dir = Path(tf.__file__).parent
    searched = {}  # directory -> the TensorFlow library whose RUNPATH names it
    for lib in [
        *sorted(tf_dir.glob("lib*.so*")),
        *sorted((tf_dir / "python").glob("_pywrap_tensorflow*.so")),
    ]:
        for d in runpath(lib):
            searched.setdefault(os.path.normpath(d), lib.name)
    out["libraries"] = {}
    for name in CUDA_LIBRARIES:
        row: dict = {"found": None}
        for d, by in searched.items():
            if (Path(d) / name).exists():
                row.update(found=str(Path(d) / name), via=by)
                break
        if row["found"]:
            try:
                ctypes.CDLL(row["found"], mode=ctypes.RTLD_GLOBAL)
                row["loads"] = True
            except OSError as exc:
                row["loads"] = str(exc)
            ldd = subprocess.run(["ldd", row["found"]], capture_output=True, text=True)
            row["unresolved"] = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
        out["libraries"][name] = row
    flags = dict(f.split("=", 1) for f in os.environ.get("XLA_FLAGS", "").split() if "=" in f)
    data_dir = flags.get("--xla_gpu_cuda_data_dir")
    out["xla_data_dir"] = data_dir
    if data_dir:
        ptxas = Path(data_dir) / "bin" / "ptxas"
        version = (
            subprocess.run([str(ptxas), "--version"], capture_output=True, text=True)
            if ptxas.exists()
            else None
        )
        out["ptxas"] = (
            version.stdout.strip().splitlines()[-1] if version and version.returncode == 0 else None
        )
        out["libdevice"] = (Path(data_dir) / "nvvm" / "libdevice" / "libdevice.10.bc").is_file()
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
