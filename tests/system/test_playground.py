"""The playground page (``GET /playground``) in a real browser: Debian's headless Chromium driven by
Selenium through Debian's chromedriver, against a real server on the tiny real GPT-2.

Chromium and chromedriver must be installed (``apt-get install chromium chromium-driver``; ``make
test-deps`` does it): without them these tests fail, they are never skipped. Each test saves
screenshots of the states it reaches under its ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from websockets.sync.client import connect

from app.keywords.model_spec import write_model_spec
from tests.support.faults import wrapped_step
from tests.support.server_harness import LiveServer, live_server, tiny_settings

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30.0  # seconds: the longest any state of the page may take to appear (a loaded CI machine)
SLOW_STEP = 0.04  # seconds per decode step while a test watches tokens arrive


def slowed(server: LiveServer) -> AbstractContextManager[None]:
    """Every step of the server's worker takes ``SLOW_STEP`` longer inside the block: slow enough to
    watch the tokens arrive."""
    return wrapped_step(server.worker, lambda: time.sleep(SLOW_STEP))


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf) -> Iterator[LiveServer]:
    with live_server(tiny_settings(tiny_dirs["openai"], slots=2), shelf=shelf) as live:
        yield live


TOP_N = 5  # the alternatives the page asks for with each token (its TOP_N_TOKENS)


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver (make test-deps does)")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--no-proxy-server")
    options.add_argument("--window-size=1280,900")
    # browser: the console; performance: the DevTools network events (to see request headers)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The playground open in the browser, and what a test does with it."""

    def __init__(self, driver: webdriver.Chrome, server: LiveServer, shots: Path):
        self.driver, self.server, self.shots = driver, server, shots

    def open(self) -> None:
        self.driver.set_window_size(1280, 900)
        self.driver.get(f"{self.server.url}/playground")
        self.wait(lambda: self.js("return document.querySelectorAll('#models tbody tr').length") > 0)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def el(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[], object], what: str = "the page", timeout: float = WAIT):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.02).until(
            lambda _: condition(), f"timed out waiting for {what}"
        )

    def set(self, field: str, value: object) -> None:
        element = self.el(f"#{field}")
        if element.get_attribute("type") == "checkbox":
            if element.is_selected() != bool(value):
                element.click()
            return
        element.clear()
        if value != "":
            element.send_keys(str(value))

    def fill(self, prompt: str, **fields: object) -> None:
        self.set("prompt", prompt)
        for name, value in fields.items():
            self.set(name.replace("_", "-"), value)

    def generate(self) -> None:
        self.el("#generate").click()

    def choose_model(self, name: str) -> None:
        """Click the model's radio button. The table is drawn again every 2 s (and after each
        request), so a WebElement found before may be stale by the click: found and clicked in one
        script instead."""
        self.js("document.querySelector(`#models input[value='${arguments[0]}']`).click()", name)
        self.wait(lambda: self.js("return window.playground.state.model") == name, f"model {name} chosen")

    def state(self) -> str:
        return self.js("return document.body.dataset.state")

    def wait_state(self, *states: str) -> str:
        return self.wait(lambda: (s := self.state()) in states and s, f"state in {states}")

    def tokens(self) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, "#output .token")

    def count(self) -> int:
        return self.js("return document.querySelectorAll('#output .token').length")

    def text(self) -> str:
        """The text of the page's token elements, in order."""
        return self.js(
            "return [...document.querySelectorAll('#output .token')].map(e => e.textContent).join('')"
        )

    def shown(self, css: str) -> str:
        element = self.el(css)
        return element.text if element.is_displayed() else ""

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def requests_sent(self) -> list[dict]:
        """The HTTP requests the page sent since the last call (DevTools' ``request`` objects)."""
        events = [json.loads(e["message"])["message"] for e in self.driver.get_log("performance")]
        return [e["params"]["request"] for e in events if e["method"] == "Network.requestWillBeSent"]

    def console_errors(self) -> list[dict]:
        return [e for e in self.driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


@pytest.fixture
def page(driver, server, tmp_path) -> Iterator[Page]:
    p = Page(driver, server, tmp_path)
    p.console_errors()  # drop what an earlier test left in the log
    p.open()
    yield p
    assert p.console_errors() == []


def post_generate(server: LiveServer, inputs: str, **parameters) -> httpx.Response:
    return httpx.post(
        f"{server.url}/generate",
        json={"inputs": inputs, "parameters": parameters},
        timeout=60,
        trust_env=False,
    )


def busy_slots(server: LiveServer) -> int:
    [model] = httpx.get(f"{server.url}/models", timeout=60, trust_env=False).json()["models"]
    return model["slots"]["busy"]


# ---- routes ----


def test_page_and_assets_are_served_from_the_package(server):
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as http:
        page = http.get("/playground")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name, kind in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
            r = http.get(f"/playground/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
            assert f"/playground/{name}" in page.text
        assert http.get("/playground/playground.html").status_code == 404  # only the listed assets
        assert http.get("/playground/..%2Fapp.py").status_code == 404
        # Nothing is loaded from elsewhere: no CDN, works offline.
        assert "http://" not in page.text and "https://" not in page.text


def test_root_redirects_browsers_and_stays_tgi_otherwise(server):
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as http:
        r = http.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert r.status_code == 303 and r.headers["location"] == "/playground"
        r = http.get("/", headers={"accept": "application/json"})
        assert r.status_code == 405 and r.json() == {
            "error": "Method Not Allowed",
            "error_type": "method_not_allowed",
        }
        assert r.headers["allow"] == "POST"
        r = http.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 200 and isinstance(r.json()[0]["generated_text"], str)
        assert "/playground" not in http.get("/openapi.json").json()["paths"]


# ---- the page in a browser ----


def test_page_loads_with_models_and_no_console_errors(page):
    row = page.el("#models tbody tr")
    assert row.get_attribute("data-model") == page.server.model
    assert page.el("#models tbody tr .state").text == "ready"
    assert page.el("#models tbody tr .slots").text == "0/2"
    assert page.state() == "idle"
    page.shot("loaded")
    assert page.console_errors() == []


def test_seeded_generation_streams_tokens_and_equals_generate(page):
    params = dict(max_new_tokens=24, temperature=0.9, top_k=50, seed=1234)
    page.fill("Once upon a time", do_sample=True, top_p=1, **params)
    with slowed(page.server):
        page.generate()
        seen = set()  # token counts seen while the request was still streaming
        while (
            now := page.js("return [document.body.dataset.state, document.querySelectorAll('.token').length]")
        )[0] != "done":
            assert now[0] in ("connecting", "streaming"), page.shown("#error")
            if now[1]:
                seen.add(now[1])
            if len(seen) == 3 and not (page.shots / "streaming.png").exists():
                page.shot("streaming")
    page.shot("done")

    assert len([n for n in seen if n < int(page.el("#count").text)]) >= 3, seen
    r = post_generate(page.server, "Once upon a time", do_sample=True, **params)
    assert r.status_code == 200, r.text
    expected = r.json()["generated_text"]
    assert page.text() == expected
    assert page.el("#output .prompt").text == "Once upon a time"  # shown before the tokens
    assert page.js("return document.getElementById('output').dataset.generatedText") == expected
    assert page.el("#finish-reason").text in ("length", "eos_token")
    assert page.el("#ttft").text.endswith(" ms")
    assert float(page.el("#tps").text) > 0
    assert all(t.get_attribute("tabindex") == "0" for t in page.tokens())


def test_hovering_or_focusing_a_token_shows_its_probability(page):
    page.fill("The meaning of life is", do_sample=False, max_new_tokens=8)
    page.generate()
    page.wait_state("done")
    r = post_generate(
        page.server, "The meaning of life is", max_new_tokens=8, details=True, top_n_tokens=TOP_N
    )
    details = r.json()["details"]
    expected = [{**t, "top": top} for t, top in zip(details["tokens"], details["top_tokens"])]
    tokens = page.tokens()
    assert [int(t.get_attribute("data-id")) for t in tokens] == [t["id"] for t in expected]

    ActionChains(page.driver).move_to_element(tokens[2]).perform()
    page.wait(lambda: page.shown("#token-info"), "the token panel")
    page.shot("hover")
    check_panel(page, expected[2])

    page.js("arguments[0].focus()", tokens[4])  # keyboard users: the focused token
    page.wait(
        lambda: tokens[4].get_attribute("aria-describedby") == "token-info", "the focused token's panel"
    )
    check_panel(page, expected[4])
    assert tokens[4].get_attribute("aria-describedby") == "token-info"


def check_panel(page: Page, token: dict) -> None:
    """The panel shows the token's probability and its top alternatives, as ``POST /generate`` gives
    them (``token``: one of its details' tokens, with ``top``: that token's ``top_tokens``)."""
    panel = page.el("#token-info")
    own = panel.find_element(By.CSS_SELECTOR, ".own").text
    shown = own.split("p = ")[1].split()[0]  # "p = 12.3% (model, temperature 1)"
    assert_percent(shown, token["logprob"])
    rows = panel.find_elements(By.CSS_SELECTOR, ".alternatives tr")
    assert len(rows) == TOP_N
    assert [int(r.get_attribute("data-id")) for r in rows] == [a["id"] for a in token["top"]]
    chance = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
    for text, alt in zip(chance, token["top"]):
        assert_percent(text, alt["logprob"])
    assert "chosen" in rows[0].get_attribute("class")  # greedy: the chosen token is the likeliest
    assert chance[0] == shown  # greedy: drawn at temperature 1, as the token's own logprob


def percent_value(text: str) -> float:
    """A probability as the page writes it: "12.3%", or "5.1e-3%" under 0.1%."""
    assert text.endswith("%"), text
    return float(text[:-1])


def assert_percent(text: str, logprob: float) -> None:
    """``text`` is exp(logprob) as a percentage, to the digits it shows."""
    expected = 100 * math.exp(logprob)
    if "e" in text:  # one decimal of the mantissa
        mantissa, exponent = text[:-1].split("e")
        assert abs(float(mantissa) - expected / 10 ** int(exponent)) <= 0.05 + 1e-9, (text, expected)
    else:
        assert abs(percent_value(text) - expected) <= 0.05 + 1e-9, (text, expected)


def test_stop_cancels_and_frees_the_slot(page):
    page.fill("A long story:", do_sample=True, seed=3, max_new_tokens=100)
    with slowed(page.server):
        page.generate()
        page.wait(lambda: page.count() >= 3, "three tokens")
        assert busy_slots(page.server) == 1
        page.shot("before-stop")
        page.el("#stop-button").click()
        page.wait_state("done")
    assert page.el("#finish-reason").text == "cancelled"
    assert 3 <= page.count() < 100
    deadline = time.monotonic() + 15
    while busy_slots(page.server) != 0:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.02)
    page.wait(lambda: page.el("#models tbody tr .slots").text == "0/2", "the page's slot count")
    page.shot("stopped")
    assert not page.el("#generate").get_property("disabled")
    assert page.el("#stop-button").get_property("disabled")


def server_error(server: LiveServer, inputs: str, **parameters) -> str:
    """What the server answers a request on ws /stream, as its error message."""
    with connect(server.ws_url, proxy=None, open_timeout=60) as ws:
        ws.send(json.dumps({"inputs": inputs, "parameters": parameters}))
        message = json.loads(ws.recv(timeout=60))
    assert message["type"] == "error", message
    return message["message"]


def test_server_errors_are_shown_as_they_are(page):
    page.fill("", max_new_tokens=5)
    page.generate()
    page.wait_state("error")
    page.shot("empty-prompt")
    assert page.shown("#error") == server_error(page.server, "", max_new_tokens=5)
    assert page.shown("#error") == "inputs: must not be empty"

    page.fill("Hello", do_sample=True, temperature=-1, max_new_tokens=5)
    page.generate()
    page.wait_state("error")
    expected = server_error(page.server, "Hello", do_sample=True, temperature=-1, max_new_tokens=5)
    assert page.shown("#error") == expected and "temperature" in expected
    assert page.count() == 0

    page.fill("Hello again", do_sample=False, max_new_tokens=3)  # the connection is still usable
    page.generate()
    page.wait_state("done")
    assert page.shown("#error") == "" and page.count() >= 1


def test_narrow_screen_stays_usable(page):
    page.driver.set_window_size(390, 844)
    page.fill("Small screen", do_sample=False, max_new_tokens=6)
    page.generate()
    page.wait_state("done")
    page.shot("narrow")
    widths = page.js(
        "const d = document.documentElement; return [d.scrollWidth, d.clientWidth, "
        "document.getElementById('output-panel').getBoundingClientRect().width]"
    )
    assert widths[0] <= widths[1], f"horizontal scrolling: {widths}"
    assert widths[2] > 0.85 * widths[1], f"the output is not full width: {widths}"
    for button in ("#generate", "#stop-button"):
        assert page.el(button).is_displayed()


def test_api_key_is_sent_on_requests_and_never_stored(page):
    page.requests_sent()  # drop what came before
    page.set("api-key", "secret-key-1")
    page.el("#prompt").click()  # the key field's change event: the models are fetched with it
    page.wait(
        lambda: any(
            r["url"].endswith("/models") and r["headers"].get("Authorization") == "Bearer secret-key-1"
            for r in page.requests_sent()
        ),
        "GET /models with the key",
    )
    stored = page.js("return [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    page.driver.refresh()  # memory only: a reload forgets it
    assert page.el("#api-key").get_attribute("value") == ""


def test_a_refused_connection_is_shown(driver, tiny_dirs, tmp_path, shelf):
    """A WebSocket that cannot connect (here: the server is gone; with API keys on, the refused
    handshake looks the same to a browser) ends the request with an error, not a hang."""
    with live_server(tiny_settings(tiny_dirs["openai"], slots=1), shelf=shelf) as gone:
        page = Page(driver, gone, tmp_path)
        page.open()
    page.fill("Anyone there?", max_new_tokens=3)
    page.generate()
    page.wait_state("error")
    page.wait(lambda: page.shown("#models-error").startswith("GET /models: "), "the models' error")
    page.shot("refused")
    assert page.shown("#error") == "could not connect to ws /stream (code 1006)"
    assert not page.el("#generate").get_property("disabled")
    page.driver.get("about:blank")  # stop the page polling the dead server
    page.console_errors()  # the browser logs the refused connections: expected here


def test_with_api_keys_the_page_opens_and_streams_with_its_key(driver, tiny_dirs, tmp_path, shelf):
    """The page's files are public; its requests and its WebSocket (the key as a subprotocol,
    since a browser cannot set headers there) carry the key typed into the page."""
    settings = tiny_settings(tiny_dirs["openai"], slots=1, api_keys=["playground-key"])
    with live_server(settings, shelf=shelf) as keyed:
        page = Page(driver, keyed, tmp_path)
        page.console_errors()
        page.driver.get(f"{keyed.url}/playground")  # no key needed for the page itself
        page.wait(lambda: page.shown("#models-error") != "", "GET /models refused without the key")
        page.fill("Who goes there?", max_new_tokens=3)
        page.generate()
        page.wait_state("error")
        assert page.shown("#error") == "could not connect to ws /stream (code 1006)"
        page.set("api-key", "playground-key")
        page.el("#prompt").click()  # the key field's change event: the models load with it
        page.wait(lambda: page.js("return document.querySelectorAll('#models tbody tr').length") > 0)
        page.generate()
        assert page.wait_state("done", "error") == "done", page.shown("#error")
        page.shot("with-key")
        assert page.count() == 3
        unauth = httpx.post(f"{keyed.url}/generate", json={"inputs": "x"}, timeout=60, trust_env=False)
        assert unauth.status_code == 401  # the page's openness is not the API's
        page.driver.get("about:blank")
        page.console_errors()  # the refused handshake and GET /models' 401 are logged: expected here


# ---- the attention view ----


def drawn(page: Page, selector: str) -> dict[tuple[int, int], float]:
    """The weights the view drew, by (query, key), read back from the SVG's data attributes."""
    cells = page.js(
        f"return [...document.querySelectorAll('#attention {selector}')]"
        ".map(e => [Number(e.dataset.q), Number(e.dataset.k), Number(e.dataset.w)])"
    )
    return {(q, k): w for q, k, w in cells}


def test_attention_view_draws_the_endpoints_numbers(page, server):
    text = "The king is dead, long live the king"
    maps = httpx.post(f"{server.url}/attention", json={"inputs": text}, timeout=60, trust_env=False).json()
    attention = np.array(maps["attention"])  # [L][H][T][T]
    t = len(maps["tokens"])
    page.set("attention-input", text)
    page.el("#attention-button").click()
    page.wait(lambda: page.js("return document.getElementById('attention-panel').dataset.state") == "shown")
    page.js("document.getElementById('attention-panel').scrollIntoView()")
    page.shot("attention-lines")
    lines = drawn(page, "line")  # default: layer 0, the mean over the heads, lines (a short text)
    mean = attention[0].mean(axis=0)
    assert set(lines) == {(q, k) for q in range(t) for k in range(q + 1) if mean[q, k] > 0}
    for (q, k), w in lines.items():
        assert abs(w - mean[q, k]) < 1e-6, (q, k)
    last_layer, head = len(maps["layers"]) - 1, 1
    Select(page.el("#attention select[data-role=layer]")).select_by_index(last_layer)
    Select(page.el("#attention select[data-role=head]")).select_by_value(str(head))
    Select(page.el("#attention select[data-role=view]")).select_by_value("heatmap")
    cells = drawn(page, "rect")
    assert len(cells) == t * (t + 1) // 2  # causal: the lower triangle
    for (q, k), w in cells.items():
        assert abs(w - attention[last_layer, head, q, k]) < 1e-6, (q, k)
    page.js("document.getElementById('attention-panel').scrollIntoView()")
    page.shot("attention-heatmap")
    Select(page.el("#attention select[data-role=view]")).select_by_value("lines")
    page.el("#attention text[data-side=query][data-i='3']").click()  # what token 3 attends to
    assert {q for q, _ in drawn(page, "line")} == {3}


def test_prompt_and_output_go_to_the_attention_view_in_one_click(page):
    page.fill("To be", max_new_tokens=4, do_sample=False)
    page.generate()
    page.wait_state("done")
    page.el("#to-attention").click()
    page.wait(lambda: page.js("return document.getElementById('attention-panel').dataset.state") == "shown")
    assert page.el("#attention-input").get_property("value") == "To be" + page.text()
    queries = page.js("return document.querySelectorAll('#attention text[data-side=query]').length")
    assert queries >= 5  # the prompt's tokens and the 4 generated


def test_attention_errors_are_shown_as_they_are(page):
    page.set("attention-input", "")
    page.el("#attention-button").click()
    page.wait(lambda: page.js("return document.getElementById('attention-panel').dataset.state") == "error")
    assert "inputs" in page.shown("#attention-error")
    logged = page.console_errors()  # the browser logs the 422 itself: expected, and nothing else
    assert logged and all("/attention" in e["message"] and "422" in e["message"] for e in logged), logged


# ---- a keyword-conditioned model ----


@pytest.fixture(scope="module")
def kw_server(tiny_dirs, tmp_path_factory, shelf) -> Iterator[LiveServer]:
    """The tiny model served twice: ``plain`` (the default) and ``kw``, marked keyword-conditioned."""
    root = tmp_path_factory.mktemp("playground-kw")
    plain, kw = root / "plain", root / "kw"
    for folder in (plain, kw):
        shutil.copytree(tiny_dirs["openai"], folder)
    write_model_spec(kw, {"delimiters": {}, "max_keywords": 3, "language": "en"})
    with live_server(tiny_settings(plain, models=[str(plain), str(kw)], slots=2), shelf=shelf) as live:
        yield live


@pytest.fixture
def kw_page(driver, kw_server, tmp_path) -> Iterator[Page]:
    p = Page(driver, kw_server, tmp_path)
    p.console_errors()
    p.open()
    yield p
    assert p.console_errors() == []


def text_of(page: Page, element_id: str) -> str:
    return page.js(f"return document.getElementById('{element_id}').textContent")


def test_a_keyword_model_is_asked_with_keywords_and_shows_the_title_and_body(kw_page):
    page = kw_page
    assert not page.el("#keywords-fields").is_displayed()  # the plain model is the default
    page.choose_model("kw")
    page.wait(lambda: page.el("#keywords-fields").is_displayed(), "the keyword fields")
    assert page.shown("#kw-note") == "(comma-separated, at most 3)"

    page.fill("Once", do_sample=True, max_new_tokens=10, temperature=1, seed=5)
    page.fill("Once", kw_keywords=" king,  dark castle ,", kw_category="tales", kw_title="The Knight")
    page.generate()
    page.wait_state("done")
    page.shot("keyword-document")
    asked = dict(keywords=["king", "dark castle"], category="tales", title="The Knight")
    r = post_generate(
        page.server, "Once", model="kw", do_sample=True, max_new_tokens=10, temperature=1, seed=5, **asked
    )
    assert r.status_code == 200, r.text
    expected = r.json()
    assert page.text() == expected["generated_text"]
    assert page.el("#document").is_displayed()
    assert text_of(page, "document-title") == expected["keywords_output"]["title"] == "The Knight"
    assert text_of(page, "document-body") == expected["keywords_output"]["body"]
    assert expected["keywords_output"]["body"].startswith("Once")

    # A keyword the model's format cannot carry: the server's message, as it is.
    page.fill("", kw_keywords="a~b", kw_title="")
    page.generate()
    page.wait_state("error")
    assert page.shown("#error") == server_error(page.server, "", model="kw", keywords=["a~b"])
    assert "~" in page.shown("#error") and not page.el("#document").is_displayed()

    # Back to the plain model: no keyword fields, and nothing of them is sent.
    page.choose_model("plain")
    page.wait(lambda: not page.el("#keywords-fields").is_displayed(), "the keyword fields to hide")
    page.fill("Hello", do_sample=False, max_new_tokens=3)
    page.generate()
    page.wait_state("done")
    assert not page.el("#document").is_displayed() and page.count() >= 1
