"""What training reads: text files whole, JSONL files one document per line (its "text" field,
never the JSON syntax), every document followed by <|endoftext|>."""

from __future__ import annotations

import json

from app.train.data import load_chunks, read_texts


def test_a_jsonl_file_is_documents_not_json_text(tmp_path, enc):
    docs = ["Знание - сила.\n\t\t-- Ф.Бэкон", 'He said "no".']
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    (tmp_path / "b.txt").write_text("plain file", encoding="utf-8")
    [chunk] = load_chunks(str(tmp_path), enc, progress=False)
    eot = enc.eot_token
    assert chunk.tolist() == [
        *enc.encode(docs[0]),
        eot,
        *enc.encode(docs[1]),
        eot,
        *enc.encode("plain file"),
        eot,
    ]
    assert list(read_texts(str(tmp_path))) == [*docs, "plain file"]  # the tokenizer trainer's reading
