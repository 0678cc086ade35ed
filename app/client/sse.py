"""Reading Server-Sent Events as both route families write them (``data: {...}`` lines, OpenAI's
stream ended by ``data: [DONE]``)."""

from __future__ import annotations

import json
from collections.abc import Iterable

DONE = "[DONE]"  # the payload of the OpenAI stream's last event


def sse_data(line: str) -> str | None:
    """The payload of one SSE line (what follows ``data:``, one leading space dropped), or None for
    any other line (blank separators, comments, other fields)."""
    if not line.startswith("data:"):
        return None
    data = line[5:]
    return data[1:] if data.startswith(" ") else data


def sse_event(line: str) -> dict | None:
    """The JSON event of one SSE line, or None when the line carries none (another line, ``[DONE]``):
    for reading a stream line by line (``for line in r.iter_lines()``)."""
    data = sse_data(line)
    return None if data is None or data == DONE else json.loads(data)


def _lines(text_or_lines: str | Iterable[str]) -> Iterable[str]:
    return text_or_lines.splitlines() if isinstance(text_or_lines, str) else text_or_lines


def sse_payloads(text_or_lines: str | Iterable[str]) -> list[str]:
    """Every ``data:`` payload of a whole stream (a body or its lines), raw: ``[DONE]`` included."""
    return [data for line in _lines(text_or_lines) if (data := sse_data(line)) is not None]


def sse_events(text_or_lines: str | Iterable[str]) -> list[dict]:
    """The JSON events of a whole stream (a body or its lines); ``[DONE]`` left out (see
    :func:`sse_payloads` to see it)."""
    return [json.loads(data) for data in sse_payloads(text_or_lines) if data != DONE]
