"""The soak's clients (bench/soak.py): what one request of each kind does over each transport, and
what it saw.

Every request is seeded and written in TGI's body shape (``inputs`` and ``parameters``), sent over
the WebSocket (``/stream``), SSE (``/generate_stream``) or plain HTTP (``/generate`` with details).
Its kind decides what the client does with it:

* ``normal``: a short prompt, up to 64 new tokens, read to the end;
* ``long``: a prompt close to the context and enough new tokens to pass it (the window slides);
* ``stop``: a one-letter stop sequence (random weights write letters soon);
* ``disconnect``: the client goes away after a few tokens (HTTP: it gives up waiting);
* ``stall``: the client stops reading for ``stall_s`` seconds after a few tokens, then reads on
  (``resume``) or goes away (``vanish``); WebSocket and SSE only;
* ``bad``: a body from :func:`app.client.bad_requests.tgi_cases`, which must be refused (422 or the
  WebSocket's ``validation`` error) with a message mentioning what was wrong.

A :class:`Seen` keeps what came back: token indices, ids, texts, the terminal event, time to the
first token and the gaps between tokens; :meth:`Seen.check` lists what is wrong with it (a token
lost or repeated, counts or texts that do not add up, a missing terminal event, an unexpected
error), which the soak sums.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import httpx
import websockets

from app.client.bad_requests import Case, tgi_cases
from app.client.sse import sse_event

WORDS = tuple(
    [
        "the",
        "king",
        "queen",
        "rode",
        "out",
        "at",
        "dawn",
        "with",
        "his",
        "knights",
        "and",
        "people",
        "of",
        "town",
        "came",
        "to",
        "gate",
        "see",
        "them",
        "go",
    ]
)
SHARES = {"long": 0.10, "disconnect": 0.05, "stall": 0.05, "bad": 0.05, "stop": 0.05}  # the rest: normal
STREAMING = ("ws", "sse")


@dataclass(frozen=True)
class Plan:
    """One request: its kind, transport and body, and what the client does while reading."""

    kind: str
    transport: str
    body: dict | None  # None for a bad request (``bad`` holds it)
    bad: Case | None = None
    act_after: int = 0  # disconnect / stall after this many tokens
    resume: bool = False  # stall: read on afterwards


@dataclass(frozen=True)
class Ev:
    kind: str  # token | done | error
    index: int = -1
    id: int = -1
    text: str = ""
    logprob: float = 0.0
    finish_reason: str | None = None
    count: int | None = None  # done: completion tokens
    error_type: str | None = None


@dataclass
class Seen:
    plan: Plan
    t_sent: float  # seconds since the measured run began (negative in the ramp)
    outcome: str = ""  # completed | disconnected | vanished | resumed | refused | cut_at_end | ...
    indices: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    terminal: Ev | None = None
    ttft: float | None = None
    gaps: list[tuple[float, float]] = field(
        default_factory=list
    )  # (seconds since the measured run began, gap)
    problems: list[str] = field(default_factory=list)

    def check(self) -> list[str]:
        """What is wrong with this request's answer (empty: nothing)."""
        problems = list(self.problems)
        if self.indices != list(range(len(self.indices))):
            problems.append("lost_or_duplicated")
        done = self.terminal if self.terminal is not None and self.terminal.kind == "done" else None
        if done is not None and done.count != len(self.indices):
            problems.append("count_mismatch")
        if done is not None and self.plan.transport != "http" and done.text != self.text:
            problems.append("text_mismatch")
        return problems


def plan_for(rng: random.Random, n_ctx: int, bad_cases: list[Case]) -> Plan:
    kind = pick(rng, SHARES, "normal")
    transport = rng.choice(STREAMING if kind == "stall" else ("ws", "sse", "http"))
    if kind == "bad":
        return Plan(kind, transport, None, bad=rng.choice(bad_cases))
    params = {"seed": rng.randrange(2**31), "do_sample": rng.random() < 0.8}
    if params["do_sample"]:
        params.update(top_k=rng.choice([0, 10, 40]), top_p=rng.choice([1.0, 0.9]))
    if kind == "long":  # a prompt near the context and enough tokens to pass it
        words = n_ctx - rng.randint(n_ctx // 16, n_ctx // 8)
        params["max_new_tokens"] = n_ctx - words + rng.randint(n_ctx // 16, n_ctx // 8)
    else:
        words = rng.randint(1, 24)
        params["max_new_tokens"] = rng.randint(12 if kind in ("disconnect", "stall") else 1, 64)
    if kind == "stop":
        params["stop"] = [rng.choice("aeos")]
    prompt = " ".join(rng.choice(WORDS) for _ in range(words))
    act_after = rng.randint(1, 8)
    return Plan(
        kind, transport, {"inputs": prompt, "parameters": params}, None, act_after, rng.random() < 0.5
    )


def pick(rng: random.Random, shares: dict[str, float], rest: str) -> str:
    x = rng.random()
    for name, share in shares.items():
        if x < share:
            return name
        x -= share
    return rest


# ---- transports: each yields Ev ----


@asynccontextmanager
async def ws_events(ws_url: str, plan: Plan) -> AsyncIterator[AsyncIterator[Ev]]:
    # No client pings: a stalled reader is seen as the server sees it, not closed by our keepalive.
    async with websockets.connect(ws_url, max_size=None, ping_interval=None, open_timeout=120) as ws:
        if plan.bad is not None:
            await ws.send(ws_bad_message(plan.bad))
        else:
            await ws.send(json.dumps({"type": "generate", **plan.body}))
        yield _ws_iter(ws)


def ws_bad_message(case: Case) -> str | bytes:
    if case.id == "invalid UTF-8":
        return case.raw()  # a binary frame: refused as not text
    if isinstance(case.body, bytes):
        return case.body.decode("utf-8")
    return json.dumps({"type": "generate", **case.body})


async def _ws_iter(ws) -> AsyncIterator[Ev]:
    async for raw in ws:
        m = json.loads(raw)
        if m["type"] == "token":
            yield Ev("token", m["index"], m["id"], m["text"], m["logprob"])
        elif m["type"] == "done":
            yield Ev(
                "done",
                text=m["generated_text"],
                finish_reason=m["finish_reason"],
                count=m["usage"]["completion_tokens"],
            )
            return
        else:
            yield Ev("error", text=m["message"], error_type=m["error_type"])
            return


@asynccontextmanager
async def sse_events(http: httpx.AsyncClient, plan: Plan) -> AsyncIterator[AsyncIterator[Ev]]:
    content = plan.bad.raw() if plan.bad is not None else json.dumps(plan.body).encode()
    headers = {"content-type": "application/json"}
    async with http.stream("POST", "/generate_stream", content=content, headers=headers) as r:
        yield _sse_iter(r)


async def _sse_iter(r: httpx.Response) -> AsyncIterator[Ev]:
    if r.status_code != 200:
        yield status_event(r.status_code, json.loads(await r.aread() or b"{}"))
        return
    async for line in r.aiter_lines():
        if (m := sse_event(line)) is None:
            continue
        if "error" in m:
            yield Ev("error", text=m["error"], error_type=m.get("error_type"))
            return
        t = m["token"]
        yield Ev("token", m["index"], t["id"], t["text"], t["logprob"])
        if m["details"] is not None:
            d = m["details"]
            yield Ev(
                "done",
                text=m["generated_text"],
                finish_reason=d["finish_reason"],
                count=d["generated_tokens"],
            )
            return


@asynccontextmanager
async def http_events(http: httpx.AsyncClient, plan: Plan) -> AsyncIterator[AsyncIterator[Ev]]:
    if plan.bad is not None:
        content = plan.bad.raw()
    else:
        content = json.dumps(
            {**plan.body, "parameters": {**plan.body["parameters"], "details": True}}
        ).encode()
    request = http.post("/generate", content=content, headers={"content-type": "application/json"})
    if plan.kind == "disconnect":  # give up waiting (the server must free the slot)
        r = None
        with suppress(TimeoutError):
            r = await asyncio.wait_for(request, timeout=0.5 + plan.act_after * 0.2)
        yield _http_iter(r)
    else:
        yield _http_iter(await request)


async def _http_iter(r: httpx.Response | None) -> AsyncIterator[Ev]:
    if r is None:
        yield Ev("error", error_type="gave_up")
        return
    body = r.json() if r.content else {}
    if r.status_code != 200:
        yield status_event(r.status_code, body)
        return
    d = body["details"]
    for i, t in enumerate(d["tokens"]):
        yield Ev("token", i, t["id"], t["text"], t["logprob"])
    yield Ev(
        "done", text=body["generated_text"], finish_reason=d["finish_reason"], count=d["generated_tokens"]
    )


def status_event(status: int, body: dict) -> Ev:
    return Ev("error", count=status, text=str(body.get("error", "")), error_type=str(body.get("error_type")))


# ---- one request ----


async def run_one(
    plan: Plan, seen: Seen, http: httpx.AsyncClient, ws_url: str, stall_s: float, t0: float
) -> None:
    opener = {"ws": lambda: ws_events(ws_url, plan), "sse": lambda: sse_events(http, plan)}.get(
        plan.transport, lambda: http_events(http, plan)
    )
    sent = time.monotonic()
    last = sent
    async with opener() as events:
        async for ev in events:
            now = time.monotonic()
            if ev.kind != "token":
                seen.terminal = ev
                seen.outcome = outcome_of(plan, ev, seen)
                return
            if seen.ttft is None:
                seen.ttft = now - sent
            elif plan.transport != "http":
                seen.gaps.append((now - t0, now - last))
            last = now
            seen.indices.append(ev.index)
            seen.ids.append(ev.id)
            seen.text += ev.text
            if plan.kind in ("disconnect", "stall") and len(seen.ids) == plan.act_after:
                if plan.kind == "disconnect" or not plan.resume:
                    seen.outcome = "disconnected" if plan.kind == "disconnect" else "vanished"
                    return
                await asyncio.sleep(stall_s)
                last = time.monotonic()  # the stall is not an inter-token gap
    if not seen.outcome:
        seen.outcome = "no_terminal"
        seen.problems.append("terminal_missing")


def outcome_of(plan: Plan, ev: Ev, seen: Seen) -> str:
    """The request's outcome from its terminal event; an unexpected one is also a problem."""
    if plan.bad is not None:
        needle = (plan.bad.ws_needle if plan.transport == "ws" else None) or plan.bad.needle
        refused = ev.kind == "error" and ev.error_type == "validation" and needle.lower() in ev.text.lower()
        if not refused or (plan.transport != "ws" and ev.count != 422):
            seen.problems.append("bad_input_not_refused")
        return "refused"
    if ev.kind == "done":
        return "stall_resumed" if plan.kind == "stall" else "completed"
    if ev.error_type == "gave_up" and plan.kind == "disconnect":
        return "disconnected"
    if ev.error_type == "overloaded":
        return "overloaded"
    if ev.error_type == "slow_client" and plan.kind == "stall":
        return "slow_client"
    seen.problems.append(f"error_{ev.error_type}")
    return f"error_{ev.error_type}"


@dataclass(frozen=True)
class Setup:
    """What every client shares."""

    base: str  # the server's URL
    t0: float  # when the measured run begins (time.monotonic); the clients start before it
    deadline: float
    n_ctx: int
    limit: int  # the server's max_new_tokens_limit
    stall_s: float
    think_s: float  # mean pause between a client's requests (exponential); the first is uniform


async def client(i: int, setup: Setup, out: list[Seen]) -> None:
    """One client: a request, a pause, another, until the deadline (then cancelled mid-request)."""
    rng = random.Random(i)
    bad_cases = tgi_cases(setup.n_ctx, setup.limit)
    ws_url = setup.base.replace("http", "ws", 1) + "/stream"
    timeout = httpx.Timeout(900, connect=60)
    async with httpx.AsyncClient(base_url=setup.base, timeout=timeout, trust_env=False) as http:
        await asyncio.sleep(rng.uniform(0, setup.think_s))  # arrivals spread from the start
        while time.monotonic() < setup.deadline:
            plan = plan_for(rng, setup.n_ctx, bad_cases)
            seen = Seen(plan, time.monotonic() - setup.t0)
            out.append(seen)
            try:
                await run_one(plan, seen, http, ws_url, setup.stall_s, setup.t0)
            except asyncio.CancelledError:
                seen.outcome = "cut_at_end"
                raise
            except websockets.ConnectionClosed as exc:
                seen.outcome = closed_outcome(plan, exc)
                if not seen.outcome.endswith("while_stalled"):
                    seen.problems.append(seen.outcome)
            except (httpx.HTTPError, websockets.WebSocketException, OSError) as exc:
                seen.outcome = f"transport_{type(exc).__name__}"
                seen.problems.append(seen.outcome)
            await asyncio.sleep(rng.expovariate(1 / setup.think_s) if setup.think_s > 0 else 0)


def closed_outcome(plan: Plan, exc: websockets.ConnectionClosed) -> str:
    """A WebSocket the server closed mid-stream: expected only for a stalled reader (1008: it fell
    behind by more than the server's bound; 1011: it answered no ping while stalled)."""
    code = exc.rcvd.code if exc.rcvd is not None else None
    if plan.kind == "stall" and code in (1008, 1011):
        return f"closed_{code}_while_stalled"
    return f"closed_{code}"
