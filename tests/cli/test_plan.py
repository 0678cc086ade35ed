"""`gpt2-serve plan`: the numbers of the table checked against figures computed by hand for GPT-2
124M and 1558M, and the rendering (text, Markdown, JSON) of those numbers.

Hand computation (parameters: wte 50257 x e + wpe 1024 x e + per layer 12e^2 + 13e + ln_f 2e):

* 124M, e=768, 12 layers: 124,439,808 parameters; float32 weights 497,759,232 B; KV cache per
  slot 12 x 2 x 1025 x 768 x 4 = 75,571,200 B; overhead 256 MiB + 10 % of weights
  = 268,435,456 + 49,775,923 = 318,211,379 B. On 6 GiB (6,442,450,944 B): spare after weights
  and overhead 5,626,480,333 B -> 74 slots fit (75 x 75,571,200 = 5,667,840,000 is too many);
  at start-up half the spare is used: 2,813,240,166 // 75,571,200 = 37, capped at 32.
* 1558M, e=1600, 48 layers: 1,557,611,200 parameters. float16: weights 3,115,222,400 B, cache per
  slot 48 x 2 x 1025 x 1600 x 2 = 314,880,000 B, overhead 268,435,456 + 311,522,240 = 579,957,696;
  spare on 6 GiB 2,747,270,848 -> 8 slots fit, 4 at start-up (1,373,635,424 // 314,880,000).
  float32: weights 6,230,444,800 B > 6 GiB: nothing fits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.cli.main import main

GIB6 = 6 * 2**30


def plan_json(capsys, *argv: str) -> list[dict]:
    assert main(["plan", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_124m_and_1558m_on_6gib_match_the_hand_computation(capsys):
    rows = plan_json(capsys, "--models", "124M,1558M", "--gpu-memory", "6GiB")
    by = {(r["model"], r["dtype"]): r for r in rows}
    assert len(rows) == 6 and all(r["memory_bytes"] == GIB6 for r in rows)

    r = by["124M", "float32"]
    assert (r["weights_bytes"], r["cache_bytes_per_slot"], r["overhead_bytes"]) == (
        497_759_232,
        75_571_200,
        318_211_379,
    )
    assert (r["max_slots"], r["slots"], r["fits"]) == (74, 32, True)
    assert r["total_bytes"] == 497_759_232 + 32 * 75_571_200 + 318_211_379

    r = by["1558M", "float16"]
    assert (r["weights_bytes"], r["cache_bytes_per_slot"], r["overhead_bytes"]) == (
        3_115_222_400,
        314_880_000,
        579_957_696,
    )
    assert (r["max_slots"], r["slots"], r["fits"]) == (8, 4, True)
    assert by["1558M", "bfloat16"]["max_slots"] == 8

    r = by["1558M", "float32"]
    assert r["weights_bytes"] == 6_230_444_800 and r["max_slots"] == 0 and r["fits"] is False


def test_text_table_shows_the_same_figures(capsys):
    assert main(["plan", "--models", "124M,1558M", "--gpu-memory", "6GiB", "--dtype", "float32,float16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["memory", "model", "dtype"]
    rows = {tuple(line.split()[2:4]): line for line in lines[1:]}
    assert len(rows) == 4
    # 497,759,232 B = 475 MiB; 75,571,200 B = 72 MiB; 74 fit; 32 at start; 3.01 GiB in all.
    assert rows["124M", "float32"].split()[4:13] == [
        "475",
        "MiB",
        "72",
        "MiB",
        "74",
        "32",
        "3.01",
        "GiB",
        "yes",
    ]
    # 3,115,222,400 B = 2.90 GiB; 314,880,000 B = 300 MiB; 8 fit; 4 at start; 4.61 GiB in all.
    assert rows["1558M", "float16"].split()[4:13] == [
        "2.90",
        "GiB",
        "300",
        "MiB",
        "8",
        "4",
        "4.61",
        "GiB",
        "yes",
    ]
    assert rows["1558M", "float32"].endswith("no: weights alone too big")


def test_more_memory_more_slots_and_slots_flag(capsys):
    rows = plan_json(capsys, "--models", "1558M", "--gpu-memory", "6GiB,24GiB", "--dtype", "float32")
    assert [r["fits"] for r in rows] == [False, True]
    # 24 GiB: spare 25,769,803,776 - 6,230,444,800 - 891,479,936 = 18,647,879,040; / 629,760,000 -> 29
    assert rows[1]["max_slots"] == 29 and rows[1]["slots"] == 14
    fixed = plan_json(
        capsys, "--models", "124M", "--gpu-memory", "1GiB", "--dtype", "float32", "--slots", "8"
    )
    assert fixed[0]["slots"] == 8 and fixed[0]["fits"] is False  # 0.46 + 8 x 0.07 + 0.30 GiB > 1 GiB


def test_markdown_table_for_the_docs(capsys):
    assert main(["plan", "--models", "124M", "--gpu-memory", "8GiB", "--dtype", "float16", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| memory | model | dtype |") and out[1].startswith("|---|")
    assert out[2].startswith("| 8.00 GiB | 124M | float16 |")


def test_a_model_folder_is_planned_from_its_hparams(capsys, tiny_dirs, tiny_hp):
    rows = plan_json(capsys, "--models", str(tiny_dirs["hf"]), "--gpu-memory", "1GiB", "--dtype", "float32")
    assert rows[0]["weights_bytes"] == tiny_hp.n_params() * 4
    assert rows[0]["cache_bytes_per_slot"] == 2 * 2 * 129 * 64 * 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-memory", "six"], "memory size 'six'"),
        (["--gpu-memory", "6GiB", "--dtype", "int8"], "--dtype 'int8'"),
        (["--gpu-memory", "6GiB", "--models", "999M"], "no model '999M'"),
    ],
)
def test_bad_arguments_are_one_line(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_docs_memory_plan_table_is_the_commands_output(capsys):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "memory-plan.md").read_text()
    command = re.search(r"\.venv/bin/gpt2-serve (plan .*)\n", doc)[1].split()
    assert main(command) == 0
    table = capsys.readouterr().out.strip()
    assert table.count("\n") == 2 + 4 * 6 * 2 - 1  # header, rule, 4 sizes x 6 cards x 2 dtypes
    assert table in doc


@pytest.mark.parametrize(("available", "slots"), [(272 * 2**20, 8), (275 * 2**20, 20), (2 * 2**30, 32)])
def test_plan_slots_are_what_the_server_starts_with(tiny_dirs, tiny_hp, available, slots):
    """The plan's "slots at start" is the count ``load_model`` (what ``serve`` calls) picks for the
    same free memory: the two must not drift apart."""
    from app.engine import memory
    from app.runtime.load import load_model

    model = load_model(tiny_dirs["openai"], memory_limit=available)
    planned = memory.startup_slots(tiny_hp, dtype="float32", configured=None, available=available)
    assert model.engine.slots == planned == slots  # 270 MiB of weights + overhead, 129 KiB per slot
    assert model.plan == memory.plan(tiny_hp, slots=planned, dtype="float32")
