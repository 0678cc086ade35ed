"""The Russian demo's corpus (bench/russian_fortunes.py): Debian's fortunes-ru files cut into one
JSONL document per fortune, links read once, repeats kept once, every n-th held out."""

from __future__ import annotations

import json

from bench.russian_fortunes import fortunes, main

FILE = "Знание - сила.\n\t\t-- Ф.Бэкон\n%\nКоротко\n%\n\nНаука - это кладбище гипотез.   \n\t\t-- Анри Пуанкаре\n%\n"


def test_a_file_is_cut_at_percent_lines_and_short_ones_are_left_out():
    assert list(fortunes(FILE, min_chars=10)) == [
        "Знание - сила.\n\t\t-- Ф.Бэкон",
        "Наука - это кладбище гипотез.\n\t\t-- Анри Пуанкаре",
    ]


def test_links_and_repeats_are_read_once_and_every_nth_is_held_out(tmp_path):
    src = tmp_path / "ru"
    src.mkdir()
    (src / "a").write_text(FILE + "Четвёртая мудрость, довольно длинная.\n%\n", encoding="utf-8")
    (src / "a.u8").symlink_to(src / "a")
    (src / "a.dat").write_bytes(b"\x00\x01index")
    (src / "b").write_text(
        "Знание - сила.\n\t\t-- Ф.Бэкон\n%\nПятая: и последняя из них.\n", encoding="utf-8"
    )
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    assert main([str(src), str(train), str(held), "--heldout-every", "2", "--min-chars", "10"]) == 0
    rows = [json.loads(line)["text"] for line in train.read_text(encoding="utf-8").splitlines()]
    out = [json.loads(line)["text"] for line in held.read_text(encoding="utf-8").splitlines()]
    assert len(rows) + len(out) == 4 and len(out) == 2  # 4 distinct fortunes; the 2nd and 4th held out
    assert out == ["Наука - это кладбище гипотез.\n\t\t-- Анри Пуанкаре", "Пятая: и последняя из них."]
    assert "Ф.Бэкон" in train.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
