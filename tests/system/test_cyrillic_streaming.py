"""The Russian demo (``model_store/demo-ru``, its own byte-level BPE) streams Cyrillic whole: over
the WebSocket every token message holds whole characters and they add up to the answer, and in
the playground (Debian's Chromium) the text shown while streaming is always a prefix of the final
text, which equals ``POST /generate``'s. (The demo's BPE merges every Cyrillic letter, so these
samples never split a character across tokens: breaking the detokenizer's hold-back does not fail
this module; tests/tokenizer/ covers split characters with byte tokens.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.server_harness import LiveServer, live_server, tiny_settings
from tests.system.test_playground import Page, driver, slowed  # noqa: F401 - the module's browser

DEMO_RU = Path(__file__).resolve().parents[2] / "model_store" / "demo-ru"
PROMPT = "Жизнь — это"
PARAMS = dict(max_new_tokens=40, temperature=0.9, top_k=40, seed=7)


@pytest.fixture(scope="module")
def server(shelf) -> Iterator[LiveServer]:
    with live_server(tiny_settings(DEMO_RU, slots=2), shelf=shelf) as live:
        yield LiveServer(live.url, live.app, model="demo-ru")


def cyrillic(text: str) -> int:
    return sum("\u0400" <= c <= "\u04ff" for c in text)


def test_websocket_token_messages_hold_whole_cyrillic_characters(server):
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"inputs": PROMPT, "parameters": {**PARAMS, "do_sample": True}}))
        texts, done = [], None
        while done is None:
            msg = json.loads(ws.recv(timeout=60))
            assert msg["type"] in ("token", "done"), msg
            if msg["type"] == "token":
                texts.append(msg["text"])
            else:
                done = msg
    assert "\ufffd" not in "".join(texts) and "".join(texts) == done["generated_text"]
    assert cyrillic(done["generated_text"]) >= 20, done["generated_text"]
    assert len(texts) == done["usage"]["completion_tokens"] == 40


def test_the_playground_shows_cyrillic_whole_while_streaming(driver, server, tmp_path):  # noqa: F811
    page = Page(driver, server, tmp_path)
    page.open()
    page.fill(PROMPT, do_sample=True, top_p=1, **PARAMS)
    shown = []
    with slowed(server):
        page.generate()
        while (state := page.state()) != "done":  # read once: it may turn "done" between two reads
            assert state in ("connecting", "streaming"), page.shown("#error")
            shown.append(page.text())
    page.shot("done")
    final = page.text()
    r = httpx.post(
        f"{server.url}/generate",
        json={"inputs": PROMPT, "parameters": {**PARAMS, "do_sample": True}},
        timeout=60,
        trust_env=False,
    )
    assert r.status_code == 200 and final == r.json()["generated_text"]
    assert cyrillic(final) >= 20 and "\ufffd" not in final
    assert len({s for s in shown if s}) >= 3, "too few states seen while streaming"
    assert all(final.startswith(s) for s in shown)  # never a broken character, later redrawn
    assert page.el("#output .prompt").text == PROMPT
    assert page.console_errors() == []
