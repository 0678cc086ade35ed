"""The keyword demo's corpus (bench/shakespeare_speeches.py): Shakespeare's plays cut into speeches, the speaker
as title and the play as category, every n-th speech held out."""

from __future__ import annotations

import json

from bench.shakespeare_speeches import main, speeches

PLAY = """HAMLET, PRINCE OF DENMARK

by William Shakespeare

PERSONS REPRESENTED.

Claudius, King of Denmark.

ACT I.

Scene I. Elsinore. A platform before the Castle.

[Francisco at his post. Enter to him Bernardo.]

Ber.
Who's there? Stand and unfold yourself, good friend of mine.

Fran.
Nay, answer me: stand, and unfold yourself, I say.

LADY MACBETH.
Out, damned spot! out, I say!--One; two; why, then 'tis
time to do't.--Hell is murky. [Exit.]

THESEUS
What say you, Hermia? be advis'd, fair maid:
To you your father should be as a god;

Ber.
He.
"""


def test_speeches_are_paragraphs_headed_by_their_speaker():
    got = list(speeches(PLAY, min_words=8))
    assert [s for s, _ in got] == ["Ber", "Fran", "Lady Macbeth", "Theseus"]
    assert got[0][1] == "Who's there? Stand and unfold yourself, good friend of mine."
    # Stage directions are left out, lines are kept, and short speeches ("He.") are not speeches.
    assert (
        got[2][1] == "Out, damned spot! out, I say!--One; two; why, then 'tis\ntime to do't.--Hell is murky."
    )
    assert all("[" not in text for _, text in got)


def test_every_nth_speech_is_held_out(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "hamlet_gut.txt").write_text(PLAY * 3)
    (texts / "sonnets_gut.txt").write_text("Shall I compare thee to a summer's day?\nThou art more lovely.\n")
    (texts / "metadata.txt").write_text(
        "[hamlet_gut]\ntitle = Hamlet\n\n[sonnets_gut]\ntitle = The Sonnets\n"
    )
    assert (
        main(
            [str(texts), str(tmp_path / "train.jsonl"), str(tmp_path / "held.jsonl"), "--heldout-every", "4"]
        )
        == 0
    )
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "held.jsonl").read_text().splitlines()]
    assert len(train) == 9 and len(held) == 3  # 12 speeches; the sonnets have no speakers
    assert {r["category"] for r in train + held} == {"Hamlet"}
    assert [r["title"] for r in held] == ["Theseus", "Theseus", "Theseus"]
