"""The observability files against the real thing: Debian's ``prometheus`` server scrapes a real
gpt2-serve (tests/support/server_harness.py, the tiny model) on loopback with the repo's scrape config
(deploy/prometheus/prometheus.yml, only its target and intervals changed: 1 s) and alert rules
(deploy/prometheus/alerts.yml); traffic makes every kind of event the dashboard shows (answered
requests, a cancelled one, one refused with 429); then Prometheus' HTTP API is asked for every
expression of the Grafana dashboard and of the rules, and each must return data with a finite value.

Alerts are conditions (``base > threshold``) that are empty while all is well, so an alert's
expression alone proves nothing. The rules are written so that each alert is ``<base> <op> <number>``
with the base a recording rule (or ``up``): the test queries each recording rule's expression,
each recorded series (proving Prometheus evaluated it) and each alert's base, and checks that every
rule's evaluation health is ``ok``. Whether the conditions fire on the right input is
``promtool test rules`` (tests/system/test_prometheus_rules.py).

Finally the dashboard and the rules may name only metrics the server exports (``GET /metrics``).
Prometheus missing is a failure, not a skip: ``make test-deps`` installs it (apt-get install prometheus).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.support.faults import wrapped_step
from tests.support.server_harness import (
    LiveServer,
    free_port,
    live_server,
    ready_200,
    server_process,
    tiny_settings,
    wait_for_metric,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "gpt2-serve.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SCRAPE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
CONDITION = re.compile(r"^(?P<base>.+?)\s*(==|!=|>=|<=|>|<)\s*(?P<threshold>-?[\d.]+)$", re.S)


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if not found:
        pytest.fail(
            "the prometheus server is not installed: `apt-get install -y prometheus` (make test-deps does it)"
        )
    return found


def dashboard_exprs() -> list[str]:
    """Every panel target, with Grafana's variables as Grafana would fill them (all models, 1m)."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    return [e.replace("$model", ".*").replace("$__rate_interval", "1m") for e in exprs]


def rules() -> tuple[dict[str, str], dict[str, str]]:
    """``({recorded name: expr}, {alert name: expr})`` of alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    every = [r for g in groups for r in g["rules"]]
    return (
        {r["record"]: r["expr"] for r in every if "record" in r},
        {r["alert"]: r["expr"] for r in every if "alert" in r},
    )


def write_config(tmp: Path, target: str) -> Path:
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", static_configs=[{"targets": [target]}])
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def server(tiny_dirs, shelf):
    # One slot and no queue: a second request while one runs is refused at once (429).
    settings = tiny_settings(tiny_dirs["openai"], slots=1, queue_size=0)
    with live_server(settings, shelf=shelf) as live:
        # Compile every shape the traffic meets (both context buckets, the sliding window) before
        # Prometheus scrapes: a compiling worker on a busy machine could delay a 1 s scrape.
        assert generate(live.url, max_new_tokens=300).status_code == 200
        yield live


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = write_config(tmp, server.url.removeprefix("http://"))
    argv = [
        prometheus_binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with server_process(
        argv, port=port, ready=ready_200("/-/ready"), ready_timeout=60, log=tmp / "log", stop_timeout=30
    ) as srv:
        yield srv.url


def generate(url: str, max_new_tokens: int = 8) -> httpx.Response:
    body = {
        "inputs": "Hello there",
        "parameters": {"max_new_tokens": max_new_tokens, "do_sample": True, "seed": 1},
    }
    return httpx.post(f"{url}/generate", json=body, timeout=60, trust_env=False)


def traffic(server: LiveServer) -> None:
    """Answered requests, then one cancelled while a second is refused (the worker's step held by
    a gate at the start of its step, so the slot is certainly taken), then answered ones again."""
    for _ in range(3):
        assert generate(server.url).status_code == 200
    gate = threading.Event()
    try:
        with wrapped_step(server.worker, lambda: gate.wait(30)), connect(server.ws_url) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "id": "long",
                        "inputs": "Once upon a time",
                        "parameters": {"max_new_tokens": 500},
                    }
                )
            )
            wait_for_metric(server.url, "gpt2_active_slots", 1.0, model=server.model)
            assert generate(server.url).status_code == 429
            ws.send(json.dumps({"type": "cancel"}))
            gate.set()
            while (message := json.loads(ws.recv(timeout=30)))["type"] == "token":
                pass
            assert message["type"] == "done" and message["finish_reason"] == "cancelled", message
    finally:
        gate.set()
    for _ in range(3):
        assert generate(server.url, max_new_tokens=16).status_code == 200


def query(api: str, expr: str) -> list[dict]:
    r = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=10, trust_env=False)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def wait_for(api: str, expr: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not query(api, expr):
        assert time.monotonic() < deadline, f"{expr}: still no data after {timeout:.0f} s"
        time.sleep(0.5)


def finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


def expressions() -> dict[str, str]:
    recorded, alerts = rules()
    out = {f"dashboard: {e}": e for e in dashboard_exprs()}
    out.update({f"rule {name}: expr": expr for name, expr in recorded.items()})
    out.update({f"rule {name}: recorded series": name for name in recorded})
    for name, expr in alerts.items():
        match = CONDITION.match(expr.strip())
        assert match, f"alert {name}: {expr!r} is not '<base> <op> <number>'"
        out[f"alert {name}: base"] = match["base"]
    return out


def test_every_dashboard_and_rule_expression_returns_data(server, prometheus):
    # Prometheus hands new targets to the scraper a few seconds after start: traffic sent before
    # the first scrapes would be in the counters' first values, and their rates would read 0.
    wait_for(prometheus, 'count_over_time(up{job="gpt2-serve"}[1m]) >= 2')
    traffic(server)
    pending = expressions()
    deadline = time.monotonic() + 40
    while pending and time.monotonic() < deadline:
        pending = {k: e for k, e in pending.items() if not finite(query(prometheus, e))}
        time.sleep(1)
    assert not pending, "no data (or only NaN) for:\n" + "\n".join(pending)
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10, trust_env=False).json()["data"]["groups"]
    evaluated = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert set(evaluated) == set(rules()[0]) | set(rules()[1])
    assert all(h == "ok" for h in evaluated.values()), evaluated
    assert finite(query(prometheus, 'up{job="gpt2-serve"} == 1'))  # the job name the rules select on


def exported(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_and_rules_name_only_exported_metrics(server):
    generate(server.url)  # every family has samples once a request ran
    names = exported(server.url)
    dashboard = DASHBOARD.read_text()
    used = set(re.findall(r"\bgpt2_[a-z0-9_]+", dashboard)) | set(
        re.findall(r"\bgpt2_[a-z0-9_]+", ALERTS.read_text())
    )
    assert used and used <= names, f"not exported by the server: {sorted(used - names)}"
    # And the dashboard covers what the issue lists, per model.
    for metric in (
        "gpt2_requests_total",
        "gpt2_generated_tokens_total",
        "gpt2_time_to_first_token_seconds_bucket",
        "gpt2_inter_token_latency_seconds_bucket",
        "gpt2_queue_length",
        "gpt2_batch_occupancy_sum",
        "gpt2_active_slots",
        "gpt2_cancelled_requests_total",
        "gpt2_rejected_requests_total",
    ):
        assert metric in dashboard, metric
