"""The Prometheus files, checked by Prometheus' own tool: ``promtool check config`` (the scrape
config and the rule files it names), ``promtool check rules`` and ``promtool test rules`` (each
alert fires on the input written for it, and a healthy model raises none:
deploy/prometheus/alerts_test.yml). promtool missing is a failure: ``make test-deps`` installs Debian's
``prometheus`` package, which has it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `apt-get install -y prometheus` (make test-deps does it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=PROM)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=" ".join,
)
def test_promtool(args):
    proc = promtool(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert alerts == fired
    # The list: not ready, queue saturated, error rate, TTFT, inter-token latency, stuck.
    assert {
        "GPT2NotReady",
        "GPT2QueueSaturated",
        "GPT2HighErrorRate",
        "GPT2SlowFirstToken",
        "GPT2SlowTokens",
        "GPT2WorkerStuck",
    } <= alerts


def test_grafana_provisioning_loads_the_dashboard_from_prometheus():
    grafana = ROOT / "deploy" / "grafana"
    source = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    assert source["datasources"][0]["url"] == "http://prometheus:9090"  # the compose service
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "gpt2-serve.yml").read_text())
    mounted = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]["grafana"][
        "volumes"
    ]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounted
    dashboard = json.loads((grafana / "dashboards" / "gpt2-serve.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "gpt2-serve"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert all('model=~"$model"' in t["expr"] for t in panel["targets"]), panel["title"]  # per model
