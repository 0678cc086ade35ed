"""Keyword-conditioned training data (`encode --keywords --language ru`) for a model whose tokenizer
is a trained byte-level BPE (docs/own-language.md): the documents are that tokenizer's ids, each
starts after that tokenizer's end-of-text token, and the delimiters are plain characters of it."""

from __future__ import annotations

import json

import numpy as np

from app.keywords.extract import extract_keywords
from app.keywords.format import DEFAULT, document
from app.tokenizer.load import load_tokenizer
from tests.support.cli import cli
from tests.support.tokenizers import RUSSIAN, train_bpe_folder

DOCS = [
    {"text": "Учёные открыли новую звезду в созвездии Лебедя. Звезда светит ярко.", "category": "наука"},
    {"text": "Повар испёк пирог с яблоками. Пирог получился вкусный и горячий.", "category": "кухня"},
    {"text": "Футболисты выиграли матч в дождь. Болельщики пели весь вечер.", "title": "Победа"},
]


def test_encode_keywords_in_russian_with_a_trained_bpe(tmp_path):
    texts = RUSSIAN + [d["text"] for d in DOCS] + ["~`^@}<|startoftext|>"]
    tok = train_bpe_folder(tmp_path / "tok", texts, vocab_size=600)
    model = tmp_path / "ru"
    init = ["init-model", str(model), "--tokenizer", str(tok), "--layout", "hf"]  # hf: no TensorFlow
    code, _, err = cli([*init, "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-ctx", "64"])
    assert code == 0, err
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n", encoding="utf-8")

    out = tmp_path / "data.npz"
    argv = ["encode", str(data), str(out), "--model", str(model), "--keywords", "--language", "ru"]
    code, stdout, err = cli([*argv, "--repeat", "2", "--max-keywords", "2"])
    assert code == 0, err
    assert "3 documents x 2 keyword sets" in stdout
    assert json.loads((tmp_path / "data.keywords.json").read_text())["language"] == "ru"

    enc = load_tokenizer(model)
    eot = enc.eot_token
    assert eot == enc.n_vocab - 1 != 50256  # the trained tokenizer's own end of text
    with np.load(out) as npz:
        tokens = npz[npz.files[0]].tolist()
    assert max(tokens) < enc.n_vocab and tokens[-1] == eot and tokens.count(eot) == 6
    ends = [i for i, t in enumerate(tokens) if t == eot]
    pieces = [tokens[a + 1 : b + 1] for a, b in zip([-1, *ends], ends, strict=False)]
    expected = {}
    for d in DOCS:
        kws = extract_keywords(d["text"], language="ru", top=5)
        assert kws and all(any("а" <= c <= "я" for c in k) for k in kws), kws  # YAKE's Russian keywords
        expected[d["text"]] = (kws, d.get("category"), d.get("title"))
    for ids in pieces:
        # Each document (after the end-of-text token that ends the one before): the whole keyword
        # document in this tokenizer's ids, its delimiters read back as the characters they are.
        text = enc.decode(ids)
        assert text.startswith(DEFAULT.start + DEFAULT.section + DEFAULT.category), text
        head, body = text.removesuffix(DEFAULT.end).rsplit(DEFAULT.section + DEFAULT.body, 1)
        kws, category, title = expected[body]
        used = head.split(DEFAULT.section + DEFAULT.keywords)[1].split(DEFAULT.section)[0].split()
        assert set(used) <= {k.replace(" ", "-") for k in kws}
        assert text == document(body, [k.replace("-", " ") for k in used], category, title)
        assert ids == enc.encode(head + DEFAULT.section + DEFAULT.body) + enc.encode(body) + [eot]
