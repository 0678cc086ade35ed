"""`gpt2-serve tokenizer train` (app/cli/tokenizer_cmd.py) in this process: a corpus of files and
JSONL in, GPT-2's files out that `tokenize` loads; bad input is one line, never a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.tokenizer.bpe import Encoder
from tests.support.cli import cli

TEXT = "Привет, мир! Как дела? Hello world, the quick brown fox.\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXT * 20, encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("Съешь же ещё этих мягких булок.\n" * 20, encoding="utf-8")
    rows = [{"text": "Всё хорошо, спасибо! 😀"}] * 20
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return folder


def test_trains_and_writes_files_tokenize_loads(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "tok"
    code, stdout, err = cli(
        [
            "tokenizer",
            "train",
            str(corpus),
            "--out",
            str(out),
            "--vocab-size",
            "400",
            "--special-token",
            "<|user|>",
        ]
    )
    assert (code, err) == (0, "")
    enc = Encoder.from_dir(out)
    assert f"{enc.n_vocab:,} tokens" in stdout and f"n_vocab {enc.n_vocab}" in stdout
    assert enc.eot_token == enc.n_vocab - 1 and enc.special_tokens == {"<|endoftext|>", "<|user|>"}
    # The JSONL was read as its texts, not as JSON: no token spells its syntax.
    json_syntax = [t for i in range(enc.n_vocab) if len(t := enc.token_bytes(i)) > 1 and set(t) & set(b'{}"')]
    assert json_syntax == []
    assert len(enc.encode("Всё хорошо")) < len("Всё хорошо".encode())  # merges learned from the JSONL

    monkeypatch.setattr("sys.stdin", io.StringIO("Привет, мир! 🙂"))
    code, ids, _ = cli(["tokenize", "--model", str(out)])
    assert (code, json.loads(ids)) == (0, enc.encode("Привет, мир! 🙂"))


def test_a_glob_and_a_single_file(corpus: Path, tmp_path: Path) -> None:
    for source in (str(corpus / "**" / "*.txt"), str(corpus / "a.txt")):
        code, _, err = cli(
            ["tokenizer", "train", source, "--out", str(tmp_path / "g"), "--vocab-size", "300"]
        )
        assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--vocab-size", "100"],
            "--vocab-size 100 is too small: the 256 byte tokens and 1 special token(s) need 257",
        ),
        (["--min-frequency", "0"], "--min-frequency must be >= 1, got 0"),
    ],
)
def test_bad_settings_are_one_line(corpus: Path, tmp_path: Path, args, message: str) -> None:
    code, _, err = cli(["tokenizer", "train", str(corpus), "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert err == f"gpt2-serve tokenizer: error: {message}\n"


def test_missing_path(tmp_path: Path) -> None:
    code, _, err = cli(["tokenizer", "train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1
    assert "no dataset at" in err and "nope" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["empty folder", "empty file", "empty jsonl"])
def test_empty_corpus(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "c"
    if kind == "empty folder":
        source.mkdir()
    elif kind == "empty file":
        source.write_text("")
    else:
        source = tmp_path / "c.jsonl"
        source.write_text(json.dumps({"text": ""}) + "\n")
    code, _, err = cli(
        ["tokenizer", "train", str(source), "--out", str(tmp_path / "o"), "--vocab-size", "300"]
    )
    assert (code, err) == (2, "gpt2-serve tokenizer: error: the corpus holds no text\n")
    assert not (tmp_path / "o").exists()


def test_bad_jsonl_line_names_it(tmp_path: Path) -> None:
    source = tmp_path / "c.jsonl"
    source.write_text('{"text": "ok"}\nnot json\n')
    code, _, err = cli(
        ["tokenizer", "train", str(source), "--out", str(tmp_path / "o"), "--vocab-size", "300"]
    )
    assert (code, err) == (
        2,
        f"gpt2-serve tokenizer: error: {source}:2: expected a JSON object with a 'text' field\n",
    )
