"""Imports point down: the clients load neither TensorFlow nor the server, the wire schemas neither
TensorFlow nor the generation path, bench/ does not import tests/, and each package of app/ imports
only the layers below it (errors < tokenizer < model, keywords < engine < runtime, train < server < cli)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("app.client.process", "'tensorflow', 'app.server'"),
        ("app.client.sse", "'tensorflow', 'app.server'"),
        *(
            (f"app.server.schemas.{s}", "'tensorflow', 'app.server.generation'")
            for s in ("tgi", "openai", "ws")
        ),
    ],
)
def test_a_client_or_wire_schema_module_loads_neither_tensorflow_nor_what_runs_requests(module, heavy):
    code = f"import sys, {module}; print(sorted(m for m in ({heavy}) if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_bench_does_not_import_tests():
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted((ROOT / "bench").glob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.match(r"\s*(from|import)\s+tests(\.|\s)", line)
    ]
    assert not found, found


# What each package of app/ may import from the others: each layer only those below it.
LAYERS = {
    "errors": set(),
    "tokenizer": {"errors"},
    "model": {"errors", "tokenizer"},
    "keywords": {"errors", "tokenizer"},
    "engine": {"errors", "model"},
    "runtime": {"errors", "tokenizer", "model", "keywords", "engine"},
    "train": {"errors", "tokenizer", "model", "keywords", "engine"},
    "client": set(),
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+app\.([a-z_]+)", re.M)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_the_layers_below_it(package):
    files = [ROOT / "app" / f"{package}.py"] if (ROOT / "app" / f"{package}.py").exists() else []
    files += sorted((ROOT / "app" / package).rglob("*.py"))
    assert files, package
    wrong = sorted(
        f"{p.relative_to(ROOT)}: app.{name}"
        for p in files
        for name in IMPORT.findall(p.read_text())
        if name != package and name not in LAYERS[package]
    )
    assert not wrong, wrong
