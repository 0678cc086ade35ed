"""deploy/k8s offline: every manifest validates against the Kubernetes 1.32 schemas that
kubernetes-validate ships (strict: unknown fields are errors); the custom resources it has no
schema for (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor) validate against the
subsets of their CRD schemas checked in under deploy/k8s/schemas/; yamllint passes on all the
repo's YAML. Then the manifests are checked against each other and against the code: the
memory plan each Deployment's dtype and slots make (:mod:`app.engine.memory`), the settings names
(:class:`app.server.settings.Settings`), the image's user, the drain timeout, the probes' routes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.cli.settings_flags import env_name
from app.engine import memory
from app.model.hparams import preset
from app.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.32.0"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): K8S / "schemas" / "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): K8S / "schemas" / "prometheusrule-monitoring-v1.json",
}
SIZES = ("124M", "355M", "774M", "1558M")
GIB = 2**30


def manifests() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def resources(kind: str | None = None) -> list[dict]:
    out = [doc for path in manifests() for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [r for r in out if kind is None or r["kind"] == kind]


def by_name(kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources(kind)}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_offline(path):
    for resource in [d for d in yaml.safe_load_all(path.read_text()) if d]:
        key = (resource["apiVersion"], resource["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(resource, json.loads(CRD_SCHEMAS[key].read_text()))
        else:  # raises SchemaNotFoundError for a kind it does not know: no silent pass
            kubernetes_validate.validate(resource, KUBERNETES, strict=True)


def test_crd_schemas_reject_what_the_real_crds_reject():
    scaled = next(iter(by_name("ScaledObject").values()))
    broken = json.loads(json.dumps(scaled))
    broken["spec"]["triggers"][0]["metadata"].pop("threshold")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(CRD_SCHEMAS["keda.sh/v1alpha1", "ScaledObject"].read_text()))
    monitor = json.loads(json.dumps(resources("ServiceMonitor")[0]))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            monitor, json.loads(CRD_SCHEMAS["monitoring.coreos.com/v1", "ServiceMonitor"].read_text())
        )


def test_yamllint():
    proc = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-c", str(ROOT / ".yamllint.yaml"), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def container_env(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = dict(by_name("ConfigMap")["gpt2-serve"]["data"])  # envFrom, then the container's own
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def test_settings_names_are_real():
    known = {env_name(f) for f in Settings.model_fields}
    for deployment in resources("Deployment"):
        assert set(container_env(deployment)) <= known, deployment["metadata"]["name"]


def quantity(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", text).groups()
    return int(number) * {"Mi": 2**20, "Gi": GIB}[unit]


@pytest.mark.parametrize("size", SIZES)
def test_one_deployment_per_size_sized_from_the_memory_plan(size):
    deployment = by_name("Deployment")[f"gpt2-{size.lower()}"]
    env = container_env(deployment)
    assert env["GPT2_MODELS"] == size
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == 1
    gpu_free = memory.parse_size(deployment["metadata"]["annotations"]["gpt2-serve/gpu-memory"])
    plan = memory.plan(preset(size), slots=int(env["GPT2_SLOTS"]), dtype=env["GPT2_DTYPE"])
    assert plan.total_bytes <= gpu_free, (
        f"{size}: {plan.total_bytes / GIB:.2f} GiB on {gpu_free / GIB:.0f} GiB"
    )
    assert (
        f"= {plan.total_bytes / GIB:.2f} GiB" in (K8S / f"gpt2-{size.lower()}.yaml").read_text()
    )  # the comment
    host = memory.plan(preset(size), slots=0, dtype="float32").weights_bytes + GIB
    assert quantity(requests["memory"]) >= host and limits["memory"] == requests["memory"]


@pytest.mark.parametrize("size", SIZES)
def test_probes_shutdown_and_user(size):
    pod = by_name("Deployment")[f"gpt2-{size.lower()}"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert startup >= (600 if size == "1558M" else 300)  # reading 6 GB and compiling takes minutes
    drain = float(container_env(by_name("Deployment")[f"gpt2-{size.lower()}"])["GPT2_DRAIN_TIMEOUT"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    uid = re.search(r"^USER (\d+):", (ROOT / "Dockerfile.cuda").read_text(), re.M)[1]
    assert pod["securityContext"]["runAsNonRoot"] is True and str(pod["securityContext"]["runAsUser"]) == uid
    assert container["ports"][0]["containerPort"] == int(
        container_env(by_name("Deployment")[f"gpt2-{size.lower()}"])["GPT2_PORT"]
    )


@pytest.mark.parametrize("size", SIZES)
def test_service_pdb_and_both_autoscalers_point_at_their_deployment(size):
    name = f"gpt2-{size.lower()}"
    labels = by_name("Deployment")[name]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = by_name(kind)[name]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    scaled = by_name("ScaledObject")[name]["spec"]
    assert scaled["scaleTargetRef"]["name"] == name
    assert f'model="{size}"' in scaled["triggers"][0]["metadata"]["query"]
    assert "gpt2_queue_length" in scaled["triggers"][0]["metadata"]["query"]
    hpa = by_name("HorizontalPodAutoscaler")[name]["spec"]
    assert hpa["scaleTargetRef"]["name"] == name
    adapter = yaml.safe_load(by_name("ConfigMap")["adapter-config"]["data"]["config.yaml"])
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == adapter["rules"][0]["name"]["as"]


def test_service_monitor_scrapes_every_service_as_the_job_the_alerts_use():
    monitor = resources("ServiceMonitor")[0]["spec"]
    for service in resources("Service"):
        labels = service["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["jobLabel"]] == "gpt2-serve"
        assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert 'job="gpt2-serve"' in (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()


def test_prometheus_rule_is_the_alerts_file():
    (rule,) = resources("PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
