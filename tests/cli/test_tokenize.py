"""`gpt2-serve tokenize` (app/cli/tokenize_cmd.py) on a folder holding only the bundled BPE files."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from app.cli import tokenize_cmd
from app.cli.main import main
from app.tokenizer.bpe import Encoder
from app.tokenizer.bundled import copy_bpe_files

TEXT = "Hello world! Привет 😀 我能\n  indented\tcode <|endoftext|>\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny"
    copy_bpe_files(folder)
    return folder


@pytest.fixture(scope="module")
def enc(model_dir: Path) -> Encoder:
    return Encoder.from_dir(model_dir)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv: list[str], stdin: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_encode(monkeypatch, capsys, model_dir: Path, enc: Encoder) -> None:
    code, out, err = run_cli(monkeypatch, capsys, ["tokenize", "--model", str(model_dir)], TEXT)
    assert (code, err) == (0, "")
    assert json.loads(out) == enc.encode(TEXT)
    assert out.endswith("]\n")


def test_decode(monkeypatch, capsys, model_dir: Path, enc: Encoder) -> None:
    ids = enc.encode(TEXT)
    code, out, err = run_cli(
        monkeypatch, capsys, ["tokenize", "--model", str(model_dir), "--decode"], json.dumps(ids)
    )
    assert (code, err) == (0, "")
    assert out == TEXT  # exactly: no newline added


def test_model_name_in_models_dir(monkeypatch, capsys, model_dir: Path, enc: Encoder) -> None:
    argv = ["tokenize", "--models-dir", str(model_dir.parent), "--model", model_dir.name]
    code, out, _ = run_cli(monkeypatch, capsys, argv, "Hello world")
    assert code == 0
    assert json.loads(out) == [15496, 995]


def test_empty_input(monkeypatch, capsys, model_dir: Path) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, ["tokenize", "--model", str(model_dir)], "")
    assert (code, out) == (0, "[]\n")


def test_unknown_model(monkeypatch, capsys, tmp_path: Path) -> None:
    argv = ["tokenize", "--models-dir", str(tmp_path), "--model", "nope"]
    code, out, err = run_cli(monkeypatch, capsys, argv, "hi")
    assert code == 2 and out == ""
    assert err.startswith("gpt2-serve tokenize: error: no model 'nope'")
    assert "Traceback" not in err


def test_folder_without_tokenizer(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, ["tokenize", "--model", str(tmp_path)], "hi")
    assert code == 2
    assert "encoder.json: file is missing" in err


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("[1, 2", "stdin is not valid JSON"),
        ('{"ids": [1]}', "expected a JSON list of integer token ids"),
        ("[1, 2.5]", "expected a JSON list of integer token ids"),
        ("[1, true]", "expected a JSON list of integer token ids"),
        ("[50257]", "token id 50257 is outside the vocabulary (0..50256)"),
    ],
)
def test_decode_bad_input(monkeypatch, capsys, model_dir: Path, stdin: str, message: str) -> None:
    code, out, err = run_cli(monkeypatch, capsys, ["tokenize", "--model", str(model_dir), "--decode"], stdin)
    assert code == 2 and out == ""
    assert message in err


def test_byte_streams_are_utf8_and_untranslated(monkeypatch, model_dir: Path, enc: Encoder) -> None:
    # Real stdin/stdout have .buffer: bytes are read and written as UTF-8, "\r\n" kept as is.
    text = "line one\r\nzwei – 😀\r\n"
    stdin = io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), encoding="ascii")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdin", stdin)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert tokenize_cmd.read_stdin() == text
    tokenize_cmd.write_stdout(text)
    assert stdout.buffer.getvalue() == text.encode("utf-8")


def test_stdin_not_utf8(monkeypatch, capsys, model_dir: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9")))
    assert main(["tokenize", "--model", str(model_dir)]) == 2
    assert "can't decode byte 0xe9" in capsys.readouterr().err
