"""GPT-2's byte-level BPE tokenizer, token-for-token the one of openai/gpt-2 ``src/encoder.py``.

How it works (as in the reference):

1. The text is split into pre-tokens by :data:`GPT2_PATTERN` (words with their leading space,
   numbers, punctuation runs, whitespace runs).
2. Each pre-token's UTF-8 bytes are mapped one-to-one onto printable characters by
   :func:`bytes_to_unicode`, which is how ``encoder.json`` and ``vocab.bpe`` spell tokens.
3. The merges of ``vocab.bpe`` are applied lowest rank first, every occurrence of the chosen pair
   left to right, until no adjacent pair has a rank; the resulting symbols are looked up in
   ``encoder.json``.

Differences from the reference are only in speed: the pair ranks are looked up directly instead of
``min(pairs, key=...)``, pre-tokens longer than a few bytes are merged with a heap in O(n log n)
instead of O(n^2) (a megabyte of digits is one pre-token), and each :class:`Encoder` keeps its own bounded LRU cache
of pre-token -> ids. By default ``<|endoftext|>`` inside text is encoded as ordinary characters, exactly
as the reference (and tiktoken's ``encode_ordinary``) does; ``encode(text, allowed_special="all")``
(tiktoken's ``allowed_special``) reads it as the end-of-text token instead.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from pathlib import Path
from typing import Literal

import regex

from app.errors import ModelFileError

# Verbatim from openai/gpt-2 src/encoder.py (tiktoken's r50k pattern is an equivalent rewrite).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = frozenset({ENDOFTEXT})  # names ``allowed_special`` may hold
DEFAULT_CACHE_SIZE = 65536  # pre-tokens remembered per Encoder
LONG_WORD = 8  # pre-tokens longer than this (in bytes) use the heap-based loop; faster from about here

# (vocabulary, merges) file names: OpenAI's release first, then Hugging Face's.
TOKENIZER_FILES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
# Encoder.digest of GPT-2's own vocabulary and merges (openai/gpt-2's encoder.json + vocab.bpe).
GPT2_DIGEST = "833e9eb5fa4db21cd564ebca0345f1cc804fd664894019efee53de0ac9c8d3b6"


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, the table of openai/gpt-2 ``src/encoder.py``.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, NBSP, soft hyphen)
    map to U+0100.. in byte order, so no token is spelled with whitespace or control characters.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


class VocabError(ValueError):
    """The token -> id mapping is unusable."""


class MergeError(ValueError):
    """Merge number ``index`` (0-based, header excluded) is unusable."""

    def __init__(self, index: int, problem: str):
        self.index = index
        self.problem = problem
        super().__init__(f"merge {index}: {problem}")


class Encoder:
    """GPT-2 byte-level BPE: ``encode(text) -> ids`` and back.

    ``encoder`` maps token strings (in the :func:`bytes_to_unicode` alphabet) to ids 0..V-1;
    ``merges`` lists the BPE merges, highest priority first (``vocab.bpe`` without its header).
    Invalid input raises :class:`VocabError` / :class:`MergeError` (both ``ValueError``);
    :meth:`from_files` turns them into :class:`ModelFileError` naming the file.
    """

    def __init__(
        self,
        encoder: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        byte_encoder = bytes_to_unicode()
        check_vocab(encoder, byte_encoder.values())
        self._encoder: dict[str, int] = dict(encoder)
        self._merges: list[tuple[str, str]] = [tuple(m) for m in merges]  # rank -> pair
        self._ranks: dict[tuple[str, str], int] = merge_ranks(self._merges, self._encoder)
        self._special = added_tokens(self._encoder, self._merges, byte_encoder.values())
        # str.translate table: Latin-1 code point of a byte -> its BPE character.
        self._byte_table = dict(byte_encoder)
        byte_decoder = {c: b for b, c in byte_encoder.items()}
        self._id_bytes: list[bytes] = [b""] * len(self._encoder)
        for token, i in self._encoder.items():
            if all(c in byte_decoder for c in token):
                self._id_bytes[i] = bytes(byte_decoder[c] for c in token)
            else:  # an added token spelled outside the byte alphabet: its text is itself
                self._id_bytes[i] = token.encode("utf-8")
        self._pattern = regex.compile(GPT2_PATTERN)
        # One cache per instance (no module-level state); thread-safe, bounded.
        self._encode_piece = functools.lru_cache(maxsize=cache_size)(self._encode_piece_uncached)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_files(cls, encoder_json: Path, vocab_bpe: Path) -> Encoder:
        """Load OpenAI's ``encoder.json`` + ``vocab.bpe`` (or Hugging Face's ``vocab.json`` +
        ``merges.txt``, the same formats). Any problem raises :class:`ModelFileError`."""
        encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        encoder = read_vocab(encoder_json)
        merges, line_numbers = read_merges(vocab_bpe)
        try:
            check_vocab(encoder, bytes_to_unicode().values())
        except VocabError as exc:
            raise ModelFileError(encoder_json, str(exc)) from None
        try:
            return cls(encoder, merges)
        except MergeError as exc:
            raise ModelFileError(vocab_bpe, f"line {line_numbers[exc.index]}: {exc.problem}") from None

    @classmethod
    def from_dir(cls, model_dir: Path) -> Encoder:
        """Load the tokenizer of a model folder: ``encoder.json`` + ``vocab.bpe`` (OpenAI) or
        ``vocab.json`` + ``merges.txt`` (Hugging Face)."""
        return cls.from_files(*bpe_files(model_dir))

    # -- properties ------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of token ids (50257 for GPT-2)."""
        return len(self._id_bytes)

    @property
    def eot_token(self) -> int | None:
        """Id of ``<|endoftext|>`` (50256 for GPT-2), or None if the vocabulary has none."""
        return self._encoder.get(ENDOFTEXT)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the vocabulary (every token with its id) and the merges in rank order: two
        encoders with the same digest encode every text alike (GPT-2's is :data:`GPT2_DIGEST`)."""
        h = hashlib.sha256()
        for token, i in sorted(self._encoder.items(), key=operator.itemgetter(1)):
            h.update(f"{i} {token}\n".encode())
        h.update(b"merges\n")
        for first, second in self._merges:
            h.update(f"{first} {second}\n".encode())
        return h.hexdigest()

    @property
    def special_tokens(self) -> frozenset[str]:
        """Names ``allowed_special`` may hold: ``<|endoftext|>`` and the vocabulary's added tokens
        (:func:`added_tokens`; for GPT-2 that is ``<|endoftext|>`` alone)."""
        return SPECIAL_TOKENS | self._special

    # -- encoding --------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special: Set[str] | Literal["all"] = frozenset()) -> list[int]:
        """Token ids of ``text``, as tiktoken's ``encode(text, allowed_special=...)``.

        Special-token strings in ``text`` are encoded as plain text unless named in
        ``allowed_special`` (a set of names from :attr:`special_tokens`, or ``"all"``): those become
        their single token, e.g. ``"<|endoftext|>"`` -> :attr:`eot_token`. A vocabulary without
        the token keeps the string as text. Unknown names raise ``ValueError``.
        """
        allowed = self._allowed_special(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        # Longest names first, so a special token that begins another one does not cut it.
        names = sorted(allowed, key=lambda name: (-len(name), name))
        for match in regex.finditer("|".join(regex.escape(name) for name in names), text):
            ids.extend(self._encode_ordinary(text[start : match.start()]))
            ids.append(self._encoder[match.group()])
            start = match.end()
        ids.extend(self._encode_ordinary(text[start:]))
        return ids

    def _allowed_special(self, allowed_special: Set[str] | Literal["all"]) -> list[str]:
        """The names of ``allowed_special`` this vocabulary has a token for."""
        known = self.special_tokens
        if allowed_special == "all":
            allowed_special = known
        elif isinstance(allowed_special, str) or not isinstance(allowed_special, Set):
            raise ValueError(
                f'allowed_special must be a set of special-token names or "all", got {allowed_special!r}'
            )
        unknown = sorted(allowed_special - known)
        if unknown:
            raise ValueError(
                f"not special tokens: {', '.join(map(repr, unknown))} (known: {', '.join(map(repr, sorted(known)))})"
            )
        return [name for name in allowed_special if name in self._encoder]

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        encode_piece = self._encode_piece
        for piece in self._pattern.findall(text):
            ids.extend(encode_piece(piece))
        return ids

    def _encode_piece_uncached(self, piece: str) -> tuple[int, ...]:
        word = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
        encoder = self._encoder
        if len(word) == 1:
            return (encoder[word],)
        symbols = self._bpe_long(word) if len(word) > LONG_WORD else self._bpe_short(word)
        return tuple(encoder[s] for s in symbols)

    def _bpe_short(self, word: str) -> list[str]:
        """The reference merge loop: merge the lowest-ranked pair everywhere, repeat."""
        ranks = self._ranks
        parts = list(word)
        while len(parts) > 1:
            best_rank = -1
            for pair in zip(parts, parts[1:], strict=False):
                rank = ranks.get(pair)
                if rank is not None and (best_rank < 0 or rank < best_rank):
                    best_rank = rank
            if best_rank < 0:
                break
            first, second = self._merges[best_rank]
            merged: list[str] = []
            i, n = 0, len(parts)
            while i < n:
                if i + 1 < n and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _bpe_long(self, word: str) -> list[str]:
        """Same result as :meth:`_bpe_short` in O(n log n): a heap of (rank, position) over a
        linked list of symbols. All occurrences of one rank are popped together and merged left
        to right, so pairs created meanwhile wait for the next round, as in the reference."""
        ranks = self._ranks
        n = len(word)
        sym: list[str | None] = list(word)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((word[i], word[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            batch = []
            while heap and heap[0][0] == rank:
                batch.append(heapq.heappop(heap)[1])  # ascending positions
            first, second = self._merges[rank]
            for i in batch:
                j = nxt[i]
                if sym[i] != first or j >= n or sym[j] != second:
                    continue  # stale: this pair was changed by an earlier merge
                merged = first + second
                sym[i], sym[j] = merged, None
                k = nxt[j]
                nxt[i] = k
                if k < n:
                    prv[k] = i
                    r = ranks.get((merged, sym[k]))  # type: ignore[arg-type]
                    if r is not None:
                        heapq.heappush(heap, (r, i))
                p = prv[i]
                if p >= 0:
                    r = ranks.get((sym[p], merged))  # type: ignore[arg-type]
                    if r is not None:
                        heapq.heappush(heap, (r, p))
        out: list[str] = []
        i = 0
        while i < n:
            out.append(sym[i])  # type: ignore[arg-type]
            i = nxt[i]
        return out

    # -- decoding --------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (may be part of a UTF-8 character)."""
        return self._id_bytes[self._check_id(token_id)]

    def byte_stream(self) -> Callable[[int], bytes]:
        """Id -> bytes for the ids of one text in order (the streaming detokenizer's input). A BPE
        token's bytes do not depend on its neighbours, so this is :meth:`token_bytes`."""
        return self.token_bytes

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a token sequence, exactly."""
        table = self._id_bytes
        return b"".join([table[self._check_id(i)] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def _check_id(self, token_id: int) -> int:
        i = operator.index(token_id)
        if not 0 <= i < len(self._id_bytes):
            raise ValueError(f"token id {i} is outside the vocabulary (0..{len(self._id_bytes) - 1})")
        return i


# -- validation and file reading -----------------------------------------------------------


def check_vocab(encoder: Mapping[str, int], byte_symbols: Iterable[str]) -> None:
    """Raise :class:`VocabError` unless ``encoder`` maps strings onto exactly 0..V-1 and has a
    token for every single byte."""
    if not isinstance(encoder, Mapping) or not encoder:
        raise VocabError("expected a non-empty JSON object of token -> id")
    seen: dict[int, str] = {}
    for token, i in encoder.items():
        if not isinstance(token, str) or not isinstance(i, int) or isinstance(i, bool):
            raise VocabError(f"entry {token!r}: {i!r} is not an integer token id")
        if i in seen:
            raise VocabError(f"id {i} is given to both {seen[i]!r} and {token!r}")
        seen[i] = token
    if min(seen) != 0 or max(seen) != len(seen) - 1:
        raise VocabError(f"ids must be 0..{len(seen) - 1} without gaps, got {min(seen)}..{max(seen)}")
    missing = [s for s in byte_symbols if s not in encoder]
    if missing:
        raise VocabError(f"{len(missing)} single-byte tokens are missing, e.g. {missing[0]!r}")


def added_tokens(
    encoder: Mapping[str, int], merges: Sequence[tuple[str, str]], byte_symbols: Iterable[str]
) -> frozenset[str]:
    """The vocabulary's added (special) tokens: the run of last ids whose tokens are neither a byte
    nor a merge's result, as GPT-2's ``<|endoftext|>`` (50256) and the special tokens
    ``gpt2-serve tokenizer train`` writes after the merges."""
    made = {*byte_symbols, *(a + b for a, b in merges)}
    found: set[str] = set()
    for token in sorted(encoder, key=encoder.__getitem__, reverse=True):
        if token in made:
            break
        found.add(token)
    return frozenset(found)


def merge_ranks(merges: Sequence[tuple[str, str]], encoder: Mapping[str, int]) -> dict[tuple[str, str], int]:
    """Pair -> rank; raise :class:`MergeError` for duplicates or symbols not in the vocabulary."""
    ranks: dict[tuple[str, str], int] = {}
    for rank, pair in enumerate(merges):
        if len(pair) != 2:
            raise MergeError(rank, f"expected two symbols, got {len(pair)}")
        if pair in ranks:
            raise MergeError(rank, f"duplicate merge {' '.join(pair)!r} (also merge {ranks[pair]})")
        for symbol in (*pair, pair[0] + pair[1]):
            if symbol not in encoder:
                raise MergeError(rank, f"{symbol!r} is not in the vocabulary")
        ranks[pair] = rank
    return ranks


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFileError(path, "file is missing") from None
    except UnicodeDecodeError:
        raise ModelFileError(path, "not valid UTF-8") from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None


def read_vocab(path: Path) -> dict:
    """``encoder.json`` / ``vocab.json``: a JSON object token -> id (checked by the caller)."""
    try:
        raw = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            path, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(raw, dict):
        raise ModelFileError(path, "expected a JSON object of token -> id")
    return raw


def read_merges(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """``vocab.bpe`` / ``merges.txt``: an optional ``#version`` line, then one merge per line.

    Returns the merges and the 1-based line number of each. Only the first line may be a header:
    ``#`` is an ordinary symbol, so later lines starting with it are merges.
    """
    text = read_text(path)
    if not text.strip():
        raise ModelFileError(path, "file is empty")
    merges: list[tuple[str, str]] = []
    line_numbers: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno == 1 and line.startswith("#version"):
            continue
        fields = line.split()
        if not fields:
            continue  # blank lines, e.g. the trailing newline
        if len(fields) != 2:
            raise ModelFileError(path, f"line {lineno}: expected two symbols, got {len(fields)}")
        merges.append((fields[0], fields[1]))
        line_numbers.append(lineno)
    return merges, line_numbers


def bpe_files(model_dir: Path | str) -> tuple[Path, Path]:
    """``(encoder.json, vocab.bpe)`` of an OpenAI folder or ``(vocab.json, merges.txt)`` of a Hugging
    Face one; otherwise :class:`ModelFileError` naming the missing folder, the missing half of a pair,
    or (no tokenizer file at all) ``encoder.json``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(model_dir, "model folder is missing")
    for pair in TOKENIZER_FILES:
        paths = (model_dir / pair[0], model_dir / pair[1])
        present = [p.exists() for p in paths]
        if all(present):
            return paths
        if any(present):
            raise ModelFileError(
                paths[present.index(False)], "file is missing (its tokenizer partner is here)"
            )
    raise ModelFileError(
        model_dir / TOKENIZER_FILES[0][0],
        "file is missing; no tokenizer here (expected encoder.json and vocab.bpe, or vocab.json and merges.txt)",
    )
