"""Soak (`make soak`): hundreds of clients against a real server process for a set time.

Each client loops until the time is up, picking a transport (WebSocket, SSE, plain ``/generate``)
and a request (prompt, length, seed) from its own seeded generator, and checks every answer:

* WebSocket and SSE: token indices contiguous from 0, no index twice, exactly one terminal message,
  the token texts add up to the final text, the count equals ``generated_tokens``/``usage``;
* ``/generate``: ``details.generated_tokens`` equals the number of tokens listed;
* every status: 200, or 429 (overloaded: counted, not an error); any 5xx is a failure.

The server's resident memory is read from ``/proc/<pid>/status`` after a warm-up and at the end.
Exit status 1 when any token was lost or duplicated, any 5xx or unexpected error occurred, or memory
grew by 5 % or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from app.client.process import serve_process  # noqa: E402
from app.client.sse import sse_event  # noqa: E402
from app.model.hparams import PRESETS, HParams  # noqa: E402
from app.model.random_init import write_random_model  # noqa: E402

WORDS = [
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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Tally:
    def __init__(self) -> None:
        self.c: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        self.c[key] += n


def request_for(rng: random.Random) -> dict:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    params = {"max_new_tokens": rng.randint(1, 48), "seed": rng.randrange(2**31)}
    if rng.random() < 0.7:
        params.update(do_sample=True, top_k=rng.choice([0, 10, 40]), top_p=rng.choice([1.0, 0.9]))
    if rng.random() < 0.2:
        params["stop"] = [rng.choice(WORDS)]
    return {"inputs": prompt, "parameters": params}


async def ws_once(url: str, body: dict, t: Tally) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps(body))
        indices, text, done = [], "", None
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "token":
                indices.append(msg["index"])
                text += msg["text"]
            elif msg["type"] == "done":
                done = msg
                break
            else:
                t.add(f"ws_error_{msg.get('error_type')}")
                return
    t.add("requests_ok")
    t.add("tokens", len(indices))
    t.add("lost_or_duplicated", len(indices) != len(set(indices)) or indices != list(range(len(indices))))
    t.add("count_mismatch", done["usage"]["completion_tokens"] != len(indices))
    t.add("text_mismatch", done["generated_text"] != text)


async def sse_once(http: httpx.AsyncClient, body: dict, t: Tally) -> None:
    async with http.stream("POST", "/generate_stream", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            t.add(f"status_{r.status_code}")
            return
        indices, text, final = [], "", None
        async for line in r.aiter_lines():
            if (msg := sse_event(line)) is None:
                continue
            if "error" in msg:
                t.add(f"sse_error_{msg.get('error_type')}")
                return
            indices.append(msg["index"])
            text += msg["token"]["text"]
            if msg["details"] is not None:
                final = msg
    t.add("requests_ok")
    t.add("tokens", len(indices))
    t.add("lost_or_duplicated", indices != list(range(len(indices))))
    t.add("terminal_missing", final is None)
    if final is not None:
        t.add("count_mismatch", final["details"]["generated_tokens"] != len(indices))
        t.add("text_mismatch", final["generated_text"] != text)


async def http_once(http: httpx.AsyncClient, body: dict, t: Tally) -> None:
    body = {**body, "parameters": {**body["parameters"], "details": True}}
    r = await http.post("/generate", json=body)
    if r.status_code != 200:
        t.add(f"status_{r.status_code}")
        return
    out = r.json()
    t.add("requests_ok")
    t.add("tokens", len(out["details"]["tokens"]))
    t.add("count_mismatch", out["details"]["generated_tokens"] != len(out["details"]["tokens"]))


async def client(i: int, base: str, deadline: float, t: Tally) -> None:
    rng = random.Random(i)
    ws_url = base.replace("http", "ws", 1) + "/stream"
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        while time.monotonic() < deadline:
            body = request_for(rng)
            kind = rng.choice(["ws", "sse", "http"])
            try:
                if kind == "ws":
                    await ws_once(ws_url, body, t)
                elif kind == "sse":
                    await sse_once(http, body, t)
                else:
                    await http_once(http, body, t)
            except (httpx.HTTPError, websockets.WebSocketException, OSError) as exc:
                t.add(f"transport_error_{type(exc).__name__}")
            t.add(f"sent_{kind}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--model", choices=["tiny", "124M"], default="tiny")
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--queue-size", type=int, default=512)
    args = ap.parse_args()
    hp = PRESETS["124M"] if args.model == "124M" else HParams(n_ctx=256, n_embd=64, n_head=4, n_layer=2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_model(Path(tmp) / f"soak-{args.model}", hp, seed=0)
        flags = ["--slots", str(args.slots), "--queue-size", str(args.queue_size)]
        env = {**os.environ, "GPT2_MAX_WEBSOCKETS": str(max(256, args.clients * 2))}
        with serve_process(model_dir, *flags, env=env, ready_timeout=600, stop_timeout=120) as srv:
            base, proc = srv.url, srv.proc  # stopped (SIGTERM) when the block ends
            warm = Tally()
            asyncio.run(_run(base, min(args.clients, 64), 20.0, warm))  # compile the shapes, fill allocators
            rss0 = rss_bytes(proc.pid)
            t = Tally()
            t0 = time.monotonic()
            asyncio.run(_run(base, args.clients, args.seconds, t))
            wall = time.monotonic() - t0
            rss1 = rss_bytes(proc.pid)
        code = proc.returncode
    growth = (rss1 - rss0) / rss0
    c = t.c
    failures = (
        c["lost_or_duplicated"]
        + c["count_mismatch"]
        + c["text_mismatch"]
        + c["terminal_missing"]
        + sum(
            v
            for k, v in c.items()
            if k.startswith("status_5") or "error_generation" in k or k.startswith("transport_error")
        )
    )
    print(
        f"\nsoak: {args.clients} clients, {wall:.0f} s, model {args.model} ({hp.n_layer} layers), "
        f"server slots {args.slots}, queue {args.queue_size}"
    )
    print(
        f"requests completed: {c['requests_ok']}  (sent: ws {c['sent_ws']}, sse {c['sent_sse']}, http {c['sent_http']})"
    )
    print(f"tokens received: {c['tokens']}  ({c['tokens'] / wall:.0f} tok/s)")
    print(f"lost or duplicated tokens (streams with a gap or repeat): {c['lost_or_duplicated']}")
    print(
        f"count/text mismatches: {c['count_mismatch']} / {c['text_mismatch']}; missing terminal: {c['terminal_missing']}"
    )
    others = {
        k: v
        for k, v in sorted(c.items())
        if k.startswith(("status_", "ws_error", "sse_error", "transport_error"))
    }
    print(f"non-200 and errors by type: {others or 'none'}")
    print(
        f"server RSS: {rss0 / 2**20:.0f} MiB after warm-up -> {rss1 / 2**20:.0f} MiB at the end ({growth * 100:+.1f} %)"
    )
    print(f"server exit code after SIGTERM: {code}")
    ok = failures == 0 and growth < 0.05 and code == 0
    print("RESULT:", "pass" if ok else "FAIL")
    return 0 if ok else 1


async def _run(base: str, clients: int, seconds: float, t: Tally) -> None:
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client(i, base, deadline, t) for i in range(clients)))


if __name__ == "__main__":
    sys.exit(main())
