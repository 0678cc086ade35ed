"""Fetch one of OpenAI's GPT-2 model folders into ``<models_dir>/<size>/``.

The reference is openai/gpt-2 ``download_model.py``: the same seven files from the same
``{base_url}/models/{size}/{file}`` addresses. On top of it this module resumes partial downloads
(``<file>.part`` and an HTTP ``Range`` request), retries dropped connections, renames a file into
place only once its size matches what the server announced, and has the finished folder checked
by :func:`app.model.verify.check_release_folder`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from app.errors import ModelFileError
from app.model.hparams import ALIASES, HParams, preset
from app.model.verify import check_release_folder

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Compressed transfer would make byte ranges and Content-Length refer to the encoded body.
IDENTITY = {"Accept-Encoding": "identity"}
CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(Exception):
    """A download that cannot finish; ``str(err)`` is a one-line message for users."""


class _Transient(Exception):
    """A 5xx answer: worth the same retry as a dropped connection."""


def download_model(
    size: str,
    models_dir: Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    client: httpx.Client | None = None,
    retries: int = 3,
    expected: HParams | None = None,
) -> Path:
    """Download GPT-2 ``size`` (``124M`` ... ``1558M``, or an old alias) and return its folder.

    ``expected`` is the hyperparameters the folder must have; by default the size's preset.
    Files already complete are skipped, ``.part`` files are resumed. Raises :class:`DownloadError`.
    """
    try:
        hp = preset(size)
    except KeyError as exc:
        raise DownloadError(exc.args[0]) from None
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    try:
        scheme = httpx.URL(base_url).scheme
    except httpx.InvalidURL:
        scheme = ""
    if scheme not in ("http", "https"):
        raise DownloadError(f"base URL {base_url!r} is not an http(s) URL")
    canonical = ALIASES.get(size, size)
    dest = Path(models_dir) / canonical
    dest.mkdir(parents=True, exist_ok=True)
    owned = client is None
    http = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60.0, connect=15.0))
    try:
        for name in FILES:
            url = f"{base_url.rstrip('/')}/models/{canonical}/{name}"
            _fetch(http, url, dest / name, f"models/{canonical}/{name}", progress=progress, retries=retries)
    finally:
        if owned:
            http.close()
    try:
        check_release_folder(dest, hp if expected is None else expected, size=canonical)
    except ModelFileError as exc:
        raise DownloadError(str(exc)) from None
    return dest


def _fetch(client: httpx.Client, url: str, final: Path, label: str, *, progress: bool, retries: int) -> None:
    """Bring ``final`` up to date with ``url`` through ``final.part``; no-op when already complete."""
    part = final.with_name(final.name + ".part")
    for attempt in range(retries + 1):
        try:
            if final.exists():
                remote = _remote_size(client, url, label)
                if remote is None or final.stat().st_size == remote:
                    return  # complete (or the server will not say; the folder check still runs)
            total = _get_into(client, url, part, label, progress=progress)
            break
        except (httpx.TransportError, _Transient) as exc:
            if attempt == retries:
                reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
                raise DownloadError(
                    f"{label}: download failed after {retries + 1} attempts ({reason})"
                ) from None
            time.sleep(min(0.5 * 2**attempt, 8.0))
    got = part.stat().st_size
    if total is not None and got != total:
        part.unlink()
        raise DownloadError(f"{label}: size mismatch, got {got} bytes but the server announced {total}")
    os.replace(part, final)


def _remote_size(client: httpx.Client, url: str, label: str) -> int | None:
    """The file's size from a HEAD request, else from the headers of a GET; None if never given."""
    response = client.head(url, headers=IDENTITY)
    _raise_for_status(response, label)
    if response.status_code == 200 and "content-length" in response.headers:
        return int(response.headers["content-length"])
    with client.stream("GET", url, headers=IDENTITY) as response:
        _raise_for_status(response, label)
        length = response.headers.get("content-length")
        return int(length) if response.status_code == 200 and length is not None else None


def _get_into(client: httpx.Client, url: str, part: Path, label: str, *, progress: bool) -> int | None:
    """One GET appended to ``part`` (resuming from its current size); returns the announced total."""
    have = part.stat().st_size if part.exists() else 0
    headers = {**IDENTITY, "Range": f"bytes={have}-"} if have else IDENTITY
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and have:  # nothing past `have`: complete, or a bad .part
            total = _content_range(response.headers.get("content-range"))[2]
            if total == have:
                return total
            part.unlink()
            return _get_into(client, url, part, label, progress=progress)
        _raise_for_status(response, label)
        if response.status_code == 206:
            start, _, total = _content_range(response.headers.get("content-range"))
            if start != have:
                raise DownloadError(f"{label}: server resumed at byte {start}, asked for {have}")
            mode = "ab"
        elif response.status_code == 200:  # a fresh start, or a server that ignores Range
            have, mode = 0, "wb"
            length = response.headers.get("content-length")
            total = int(length) if length is not None else None
        else:
            raise DownloadError(f"{label}: unexpected HTTP {response.status_code} from the server")
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        )
        with bar, open(part, mode) as out:
            for chunk in response.iter_bytes():  # as received, so a drop keeps every byte so far
                out.write(chunk)
                bar.update(len(chunk))
    return total


def _raise_for_status(response: httpx.Response, label: str) -> None:
    code = response.status_code
    if code == 404:
        raise DownloadError(f"server has no file {label} (HTTP 404)")
    if code in RETRY_STATUSES:
        raise _Transient(f"HTTP {code}")
    if code >= 400:
        raise DownloadError(f"server refused {label} (HTTP {code})")


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``*`` parts are None."""
    match = CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise DownloadError(f"server sent an unreadable Content-Range {value!r}")
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )
