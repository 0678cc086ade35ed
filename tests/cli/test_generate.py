"""`gpt2-serve generate` end to end on the tiny real GPT-2 (both on-disk layouts) and the default
model. Every run loads a model and compiles its functions, so each test makes few runs and checks
several things about each."""

from __future__ import annotations

import io
import json

import pytest

from app.cli.main import main
from app.tokenizer.bpe import Encoder

RULE = "=" * 40
PROMPT = "The quick brown fox"


def generate(*args: str) -> int:
    return main(["generate", *args])


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def header(n: int) -> str:
    return f"{RULE} SAMPLE {n} {RULE}"


@pytest.mark.slow
def test_conditional_json_batched_seeded_and_interactive(tiny_dirs, capsys, monkeypatch):
    model = str(tiny_dirs["openai"])
    seeded = ["--model", model, "--nsamples", "3", "--length", "6", "--seed", "5", "--ignore-eos"]
    assert generate(*seeded, "--prompt", PROMPT, "--json", "--batch-size", "2") == 0
    samples = json_lines(capsys.readouterr().out)
    assert len(samples) == 3
    enc = Encoder.from_dir(tiny_dirs["openai"])
    for i, s in enumerate(samples):
        assert s["text"] == enc.decode(s["token_ids"])
        assert len(s["token_ids"]) == 6  # --length with --ignore-eos: exactly that many
        assert all(0 <= t < enc.n_vocab for t in s["token_ids"])
        assert s["finish_reason"] == "length" and s["seed"] == 5 + i and s["prompt"] == PROMPT
    assert len({tuple(s["token_ids"]) for s in samples}) == 3  # seeds 5, 6, 7 differ

    # A second run with the same seed gives the same samples, here reading the prompt from stdin
    # (--interactive), one sample at a time, in text mode; an empty line is refused; samples are
    # numbered on across prompts, with a rule of 80 after each prompt's samples.
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PROMPT}\n\nGeneral Kenobi\n"))
    assert generate(*seeded, "--interactive", "--batch-size", "1") == 0
    out, err = capsys.readouterr()
    first = "".join(f"{header(i + 1)}\n{s['text']}\n" for i, s in enumerate(samples)) + "=" * 80 + "\n"
    assert out.startswith(first)
    rest = out[len(first) :].splitlines()
    assert [line for line in rest if " SAMPLE " in line] == [header(n) for n in (4, 5, 6)]
    assert rest[-1] == "=" * 80
    assert err.count("Prompt should not be empty!") == 1


@pytest.mark.slow
def test_temperature_zero_is_the_same_in_both_layouts(tiny_dirs, capsys):
    args = ["--prompt", PROMPT, "--temperature", "0", "--length", "8", "--ignore-eos"]
    assert generate("--model", str(tiny_dirs["openai"]), *args, "--json") == 0
    (greedy,) = json_lines(capsys.readouterr().out)
    assert len(greedy["token_ids"]) == 8
    # Text mode on the Hugging Face folder: one header, then the same text.
    assert generate("--model", str(tiny_dirs["hf"]), *args) == 0
    assert capsys.readouterr().out == f"{header(1)}\n{greedy['text']}\n"


@pytest.mark.slow
def test_unconditional(tiny_dirs, capsys):
    assert generate("--model", str(tiny_dirs["hf"]), "--length", "5", "--seed", "3", "--json") == 0
    (sample,) = json_lines(capsys.readouterr().out)
    assert sample["prompt"] is None and sample["seed"] == 3
    assert 1 <= len(sample["token_ids"]) <= 5
    # An EOS ends the sample and is not part of it.
    assert (len(sample["token_ids"]) == 5) == (sample["finish_reason"] == "length")
    assert 50256 not in sample["token_ids"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "{tmp}/no-such-model"], "no model"),
        (["--model", "{tmp}/no-such-model", "--nsamples", "0"], "--nsamples"),
        (["--model", "{openai}", "--top-p", "2"], "top_p"),
        (["--model", "{openai}", "--device", "GPU:3"], "GPU:3"),
    ],
    ids=["bad-model-path", "nsamples-0", "top-p-2", "missing-device"],
)
def test_user_errors_exit_2_with_one_line(tiny_dirs, tmp_path, capsys, args, needle):
    args = [a.format(tmp=tmp_path, openai=tiny_dirs["openai"]) for a in args]
    assert generate(*args, "--length", "2") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("gpt2-serve generate: error: ") and err.endswith("\n")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


@pytest.mark.slow
def test_default_model_is_written_once(tmp_path, capsys):
    target = tmp_path / "random-default"
    assert generate("--models-dir", str(tmp_path), "--length", "5") == 0
    out, err = capsys.readouterr()
    assert target.is_dir()
    assert "wrote a randomly initialised GPT-2" in err and str(target) in err
    assert out.startswith(header(1) + "\n")
    mtimes = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    assert generate("--models-dir", str(tmp_path), "--length", "5") == 0
    out, err = capsys.readouterr()
    assert "wrote a randomly initialised" not in err
    assert out.startswith(header(1) + "\n")
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == mtimes
