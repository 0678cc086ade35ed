"""GPT-2 BPE (app/tokenizer/bpe.py): byte-exact against tiktoken and against openai/gpt-2's
reference merge loop; loading errors; the bundled files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from app.errors import ModelFileError
from app.tokenizer import bundled
from app.tokenizer.bpe import Encoder, bytes_to_unicode
from app.tokenizer.bundled import BundledFilesError, bundled_bpe_files, copy_bpe_files

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tik() -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding built from the SAME bundled files (local paths, no cache dir,
    so nothing is fetched or written)."""
    encoder_json, vocab_bpe = bundled_bpe_files()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # "" disables tiktoken's cache: plain local reads
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=bundled.VOCAB_BPE_SHA256,
            encoder_json_hash=bundled.ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2-bundled",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


CORPUS = {
    "empty": "",
    "english": (
        "The quick brown fox jumps over the lazy dog. It's a well-known pangram; "
        "we'll see whether it'd survive, they're sure I'm right and you've been told."
    ),
    "contractions": "'s 't 're 've 'm 'll 'd 'S 'T 'RE don't DON'T o'clock '' ''' 'x",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёлка!",
    "chinese": "我能吞下玻璃而不伤身体。机器学习，自然语言处理！",
    "japanese_korean": "日本語のテキスト、ｶﾀｶﾅ 한국어 텍스트",
    "emoji": "🙂😀🎉 family 👨‍👩‍👧‍👦 thumbs 👍🏽👍🏿 flag 🇺🇦🇯🇵 heart ❤️ keycap 1️⃣",
    "combining": "e\u0301 a\u0308\u0304 Z\u0351\u0352\u0353a\u035c\u0361lgo n\u0303 \u0915\u094d\u0937",
    "python": (
        "def fib(n: int) -> int:\n"
        '    """Fibonacci."""\n'
        "    if n < 2:\n"
        "        return n\n"
        "\treturn fib(n - 1) + fib(n - 2)  # recursion!\n"
        "\n\n"
        "print({k: v for k, v in zip('abc', [1, 2, 3])}, sep='\\t')\n"
    ),
    "whitespace": "a  b   c    d\n\ne\n\n\nf\t\tg \t \n h\r\n\r\ni   \n   j \u00a0k\u3000l\u2028m\x0bn\x0co  ",
    "only_spaces": "     ",
    "only_newlines": "\n\n\n\n",
    "trailing": "end with spaces   ",
    "leading": "   start with spaces",
    "numbers": "0 7 42 2024 3.14159 1,000,000 12345678901234567890 ٣٤٥ ⅻ ½ 10e-7 0x1F",
    "endoftext_as_text": "before<|endoftext|>after <|endoftext|> <|endoftext|>",
    "punctuation": "!!! ??? ... --- *** ((( ))) <<>> @@## $$%% ^^&& ~`~ «»„“ —–",
    "controls": "\x00\x01\x02\x1b[31mred\x1b[0m\x7f\x85",
    "mixed": "Hello 世界! Привет, мир 🌍 — naïve café résumé 123abc abc123 a1b2c3",
    "long_word": "Pneumonoultramicroscopicsilicovolcanoconiosis" * 5,
    "url": "https://example.com/path?query=a%20b&x=1#frag user@example.org",
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_matches_tiktoken_on_corpus(enc: Encoder, tik: tiktoken.Encoding, name: str) -> None:
    text = CORPUS[name]
    ids = enc.encode(text)
    assert ids == tik.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert enc.decode_bytes(ids) == text.encode("utf-8")


def test_matches_tiktoken_on_whole_corpus(enc: Encoder, tik: tiktoken.Encoding) -> None:
    text = "\n".join(CORPUS.values())
    assert enc.encode(text) == tik.encode_ordinary(text)


def test_known_ids(enc: Encoder) -> None:
    # Values from GPT-2's vocabulary, independent of tiktoken.
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.encode("\n") == [198]
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.token_bytes(50256) == b"<|endoftext|>"
    assert enc.token_bytes(220) == b" "


def test_endoftext_in_text_is_plain(enc: Encoder) -> None:
    ids = enc.encode("a<|endoftext|>b")
    assert enc.eot_token not in ids
    assert enc.decode(ids) == "a<|endoftext|>b"
    assert enc.decode([enc.eot_token]) == "<|endoftext|>"


@pytest.mark.parametrize("allowed", [{"<|endoftext|>"}, "all"])
@pytest.mark.parametrize(
    "text",
    [
        "",
        "<|endoftext|>",
        "a<|endoftext|>b",
        " <|endoftext|> x<|endoftext|><|endoftext|>",
        CORPUS["endoftext_as_text"],
    ],
)
def test_allowed_special_matches_tiktoken(enc: Encoder, tik: tiktoken.Encoding, text: str, allowed) -> None:
    assert enc.encode(text, allowed_special=allowed) == tik.encode(text, allowed_special=allowed)


def test_allowed_special_reads_endoftext_as_the_token(enc: Encoder) -> None:
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [
        *enc.encode("a"),
        50256,
        *enc.encode("b"),
    ]
    assert enc.encode("a<|endoftext|>b", allowed_special=set()) == enc.encode("a<|endoftext|>b")


def test_allowed_special_without_the_token_keeps_text() -> None:
    bytes_only = Encoder({c: i for i, c in enumerate(bytes_to_unicode().values())}, [])
    assert bytes_only.eot_token is None
    assert bytes_only.encode("<|endoftext|>", allowed_special="all") == bytes_only.encode("<|endoftext|>")


@pytest.mark.parametrize("bad", [{"<|endoftext|"}, "<|endoftext|>", ["<|endoftext|>"]])
def test_allowed_special_rejects_bad_names(enc: Encoder, bad) -> None:
    with pytest.raises(ValueError, match="special"):
        enc.encode("x", allowed_special=bad)


def test_decode_replaces_split_characters(enc: Encoder) -> None:
    ids = enc.encode("😀")
    assert len(ids) > 1  # an emoji is several byte tokens
    assert enc.decode(ids[:1]) == "\ufffd"
    assert enc.decode_bytes(ids[:1]) == "😀".encode()[: len(enc.token_bytes(ids[0]))]


@pytest.mark.parametrize("bad", [50257, -1, 10**9])
def test_decode_out_of_range(enc: Encoder, bad: int) -> None:
    with pytest.raises(ValueError, match=rf"^token id {bad} is outside the vocabulary \(0\.\.50256\)$"):
        enc.decode([1, bad])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        enc.token_bytes(bad)


def test_decode_accepts_numpy_ints(enc: Encoder) -> None:
    np = pytest.importorskip("numpy")
    assert enc.decode(np.array([15496, 995], dtype=np.int32)) == "Hello world"


@PROPERTY
@given(st.text())
def test_roundtrip_any_text(enc: Encoder, text: str) -> None:
    assert enc.decode(enc.encode(text)) == text


@PROPERTY
@given(st.text(st.characters(codec="utf-8")))
def test_matches_tiktoken_any_text(enc: Encoder, tik: tiktoken.Encoding, text: str) -> None:
    assert enc.encode(text) == tik.encode_ordinary(text)


# Few characters, chosen to hit the pattern's edges: contractions, whitespace runs before
# letters/digits/punctuation, multi-byte letters.
TRICKY = st.text(
    st.sampled_from(list(" \t\n\r\u00a0'sdtmlvreSD0123456789aZé中😀\u200d\u0301.,!-_")), max_size=60
)


@PROPERTY
@given(TRICKY)
def test_matches_tiktoken_tricky_alphabet(enc: Encoder, tik: tiktoken.Encoding, text: str) -> None:
    ids = enc.encode(text)
    assert ids == tik.encode_ordinary(text)
    assert enc.decode(ids) == text


def test_long_pretokens(enc: Encoder, tik: tiktoken.Encoding) -> None:
    # One pre-token each, merged by the heap-based loop.
    for text in ("ab" * 500, "x" * 999, "31415926535" * 60, "é中" * 200, "😀" * 100):
        assert enc.encode(text) == tik.encode_ordinary(text), text[:20]


def test_megabyte_is_fast(enc: Encoder) -> None:
    text = "\n".join(CORPUS.values())
    text = (text * (1_000_000 // len(text) + 1))[:1_000_000]
    digits = "1234567890" * 10_000  # a single 100 kB pre-token: quadratic merging would hang
    start = time.perf_counter()
    ids = enc.encode(text)
    digit_ids = enc.encode(digits)
    elapsed = time.perf_counter() - start
    assert enc.decode(ids) == text
    assert enc.decode(digit_ids) == digits
    assert elapsed < 20, f"encoding took {elapsed:.1f} s"


def test_small_cache_still_exact(tik: tiktoken.Encoding) -> None:
    enc = Encoder.from_files(*bundled_bpe_files())
    small = Encoder(enc._encoder, enc._merges, cache_size=2)
    text = CORPUS["english"] + CORPUS["python"]
    assert small.encode(text) == tik.encode_ordinary(text)
    assert small.encode(text) == tik.encode_ordinary(text)


# -- exactness against openai/gpt-2's own merge loop, on small random merge tables ----------


def reference_bpe(token: str, bpe_ranks: dict[tuple[str, str], int]) -> list[str]:
    """``Encoder.bpe`` of openai/gpt-2 src/encoder.py, transcribed (minus its cache)."""

    def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
        return set(zip(word, word[1:], strict=False))

    word = tuple(token)
    pairs = get_pairs(word)
    if not pairs:
        return [token]
    while True:
        bigram = min(pairs, key=lambda pair: bpe_ranks.get(pair, float("inf")))
        if bigram not in bpe_ranks:
            break
        first, second = bigram
        new_word: list[str] = []
        i = 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new_word.extend(word[i:])
                break
            new_word.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
        pairs = get_pairs(word)
    return list(word)


@st.composite
def merge_tables(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Random merges over the symbols a, b, c and what earlier merges made; they need not be
    "sensible" (a pair may outrank the merge that creates its left symbol)."""
    symbols = ["a", "b", "c"]
    merges: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 25))):
        pair = (draw(st.sampled_from(symbols)), draw(st.sampled_from(symbols)))
        if pair in merges:
            continue
        merges.append(pair)
        if pair[0] + pair[1] not in symbols:
            symbols.append(pair[0] + pair[1])
    order = draw(st.permutations(range(len(merges))))
    return [merges[i] for i in order]


def toy_encoder(merges: list[tuple[str, str]]) -> Encoder:
    tokens = list(bytes_to_unicode().values())
    for a, b in merges:
        if a + b not in tokens:
            tokens.append(a + b)
    return Encoder({t: i for i, t in enumerate(tokens)}, merges)


@settings(max_examples=300, deadline=None)
@given(merge_tables(), st.text("abc", max_size=40))
def test_matches_reference_merge_loop(merges: list[tuple[str, str]], word: str) -> None:
    enc = toy_encoder(merges)
    ranks = {pair: i for i, pair in enumerate(merges)}
    expected = [enc._encoder[s] for s in reference_bpe(word, ranks)] if word else []
    assert enc.encode(word) == expected
    if word:  # both internal loops, whatever the length threshold
        assert enc._bpe_short(word) == enc._bpe_long(word) == reference_bpe(word, ranks)


def test_round_semantics() -> None:
    # ("ab","a") outranks ("a","b"): the reference merges every "a b" first -> [ab, ab], whereas
    # merging one occurrence at a time would give [aba, b].
    enc = toy_encoder([("ab", "a"), ("a", "b")])
    assert enc._bpe_short("abab") == enc._bpe_long("abab") == ["ab", "ab"]


# -- loading -------------------------------------------------------------------------------


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    copy_bpe_files(tmp_path)
    return tmp_path


def test_from_dir_openai_names(model_dir: Path, enc: Encoder) -> None:
    assert Encoder.from_dir(model_dir).encode(CORPUS["mixed"]) == enc.encode(CORPUS["mixed"])


def test_from_dir_hugging_face_names(model_dir: Path, enc: Encoder) -> None:
    (model_dir / "encoder.json").rename(model_dir / "vocab.json")
    (model_dir / "vocab.bpe").rename(model_dir / "merges.txt")
    hf = Encoder.from_dir(model_dir)
    assert hf.encode(CORPUS["mixed"]) == enc.encode(CORPUS["mixed"])
    assert hf.eot_token == 50256


def test_merges_without_trailing_newline_or_with_crlf(model_dir: Path, enc: Encoder) -> None:
    path = model_dir / "vocab.bpe"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.rstrip("\n").replace("\n", "\r\n"), encoding="utf-8", newline="")
    assert Encoder.from_dir(model_dir).encode(CORPUS["english"]) == enc.encode(CORPUS["english"])


def error_for(model_dir: Path) -> ModelFileError:
    with pytest.raises(ModelFileError) as info:
        Encoder.from_dir(model_dir)
    return info.value


def test_missing_folder(tmp_path: Path) -> None:
    err = error_for(tmp_path / "nope")
    assert err.path == tmp_path / "nope"


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_missing_file(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    err = error_for(model_dir)
    assert err.path == model_dir / name
    assert "file is missing" in err.problem
    assert name in str(err)


def test_from_files_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="encoder.json: file is missing"):
        Encoder.from_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_unreadable_file(model_dir: Path) -> None:
    (model_dir / "encoder.json").unlink()
    (model_dir / "encoder.json").mkdir()
    err = error_for(model_dir)
    assert err.path == model_dir / "encoder.json"
    assert "cannot be read" in err.problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"a": 0,', "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        ("[1, 2]", "expected a JSON object"),
        ("{}", "non-empty"),
        ('{"a": "zero"}', "not an integer token id"),
        ('{"a": 0, "b": 0}', "given to both"),
        ('{"a": 0, "b": 2}', "without gaps"),
        ('{"a": 0, "b": 1}', "single-byte tokens are missing"),
    ],
)
def test_bad_vocab(model_dir: Path, content: str | bytes, problem: str) -> None:
    path = model_dir / "encoder.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    err = error_for(model_dir)
    assert err.path == path
    assert problem in err.problem


def test_truncated_vocab(model_dir: Path) -> None:
    path = model_dir / "encoder.json"
    path.write_bytes(path.read_bytes()[:5000])
    err = error_for(model_dir)
    assert err.path == path and err.problem.startswith("not valid JSON")


def replace_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = new
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("Ġ t h", "line 7: expected two symbols, got 3"),
        ("Ġt", "line 7: expected two symbols, got 1"),
        ("Ġ t", "line 7: duplicate merge 'Ġ t' (also merge 0)"),
        ("Ġ ☃", "line 7: '☃' is not in the vocabulary"),
    ],
)
def test_bad_merges_line(model_dir: Path, line: str, problem: str) -> None:
    path = model_dir / "vocab.bpe"
    replace_line(path, 7, line)
    err = error_for(model_dir)
    assert err.path == path
    assert err.problem == problem


def test_merges_line_numbers_count_blank_lines(model_dir: Path) -> None:
    path = model_dir / "vocab.bpe"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[3:3] = ["", ""]
    lines[9] = "x y z"
    path.write_text("\n".join(lines), encoding="utf-8")
    assert error_for(model_dir).problem == "line 10: expected two symbols, got 3"


def test_merges_hash_lines_are_merges(model_dir: Path) -> None:
    # '#' is an ordinary symbol: only the first line may be the "#version" header.
    merges = (model_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert merges[0].startswith("#version")
    assert any(line.startswith("#") for line in merges[1:])
    assert Encoder.from_dir(model_dir).encode("## #") == [2235, 1303]


def test_empty_merges(model_dir: Path) -> None:
    (model_dir / "vocab.bpe").write_text("", encoding="utf-8")
    err = error_for(model_dir)
    assert err.path == model_dir / "vocab.bpe" and err.problem == "file is empty"


# -- bundled files ---------------------------------------------------------------------------


def test_bundled_files_are_gpt2s() -> None:
    encoder_json, vocab_bpe = bundled_bpe_files()
    assert encoder_json.name == "encoder.json" and vocab_bpe.name == "vocab.bpe"
    assert bundled.sha256_of(encoder_json).startswith("196139668be6")
    assert bundled.sha256_of(vocab_bpe).startswith("1ce1664773c5")
    assert len(json.loads(encoder_json.read_text(encoding="utf-8"))) == 50257


def test_copy_bpe_files(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "model"
    copied = copy_bpe_files(dest)
    assert copied == (dest / "encoder.json", dest / "vocab.bpe")
    for src, dst in zip(bundled_bpe_files(), copied, strict=True):
        assert src.read_bytes() == dst.read_bytes()


def test_bundled_hash_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for src in bundled_bpe_files():
        shutil.copyfile(src, data / src.name)
    with (data / "vocab.bpe").open("a", encoding="utf-8") as f:
        f.write("x y\n")
    monkeypatch.setattr(bundled, "_data_dir", lambda: data)
    with pytest.raises(BundledFilesError, match=r"vocab\.bpe: sha256 is .* expected 1ce1664773c5"):
        bundled_bpe_files()
    (data / "vocab.bpe").unlink()
    with pytest.raises(BundledFilesError, match="file is missing"):
        bundled_bpe_files()


def test_bundled_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "PACKAGE", "no_such_package_for_gpt2_serve")
    with pytest.raises(BundledFilesError, match="not installed"):
        bundled_bpe_files()
