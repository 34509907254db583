"""The Helm chart (deploy/helm/turnpike): linted and rendered by the real Helm (v4, through
helm-sdkpy; tests/deploy/helmrender.py says how without a cluster), every rendered manifest
valid under the Kubernetes JSON schemas (kubernetes-validate), and the processes it runs the
topology of tests/deploy/topology.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    NOT_TURNPIKE_SETTINGS,
    is_read_by_settings,
    settings_read_by_turnpike,
)
from tests.deploy.helmrender import lint, render
from tests.deploy.topology import (
    COMMANDS,
    LIVENESS_PATH,
    ONE_OFF,
    READINESS_PATH,
    REPO,
    SERVICES,
    WEB_PORT,
)

# The oldest and the newest Kubernetes minor versions checked (kubernetes-validate bundles
# the schemas of each).
KUBE_VERSIONS = ("1.29.0", "1.37.0")
SECRET_SETTINGS = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CREDENTIAL_ENCRYPTION_KEYS",
                   "METRICS_TOKEN"}
# Helm's lint severities: 1 info, 2 warning, 3 error.
LINT_WARNING = 2


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def component(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["labels"]["app.kubernetes.io/component"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)}"
    return found[0]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(CHART)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def test_helm_lint_passes() -> None:
    result = lint(CHART)
    assert result["Errors"] in (None, [])
    assert [m for m in result["Messages"] if m["Severity"] >= LINT_WARNING] == []


def test_helm_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "turnpike"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ include \"no.such\" . }}\n")
    result = lint(broken)
    assert result["Errors"]
    assert any(m["Path"].startswith("templates/") and m["Severity"] > LINT_WARNING
               for m in result["Messages"])


def test_renders_every_component(docs: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["labels"]["app.kubernetes.io/component"])
                   for d in docs)
    assert kinds == sorted([
        ("ConfigMap", "config"), ("Service", "web"), ("PodDisruptionBudget", "web"),
        ("HorizontalPodAutoscaler", "web"), ("Job", ONE_OFF),
        *(("Deployment", name) for name in SERVICES)])


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_are_valid_kubernetes(docs: list[dict[str, Any]], version: str) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_rejects_a_broken_manifest(docs: list[dict[str, Any]]) -> None:
    web = component(docs, "Deployment", "web")
    broken = yaml.safe_load(yaml.safe_dump(web))
    container(broken)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[-1], strict=True)


def test_each_process_runs_its_command(docs: list[dict[str, Any]]) -> None:
    for name in SERVICES:
        assert container(component(docs, "Deployment", name))["command"] == COMMANDS[name]
    job = component(docs, "Job", ONE_OFF)
    assert container(job)["command"] == COMMANDS[ONE_OFF]
    images = {container(d)["image"] for d in docs if d["kind"] in ("Deployment", "Job")}
    assert len(images) == 1, images


def test_migrate_is_a_hook_before_install_and_upgrade(docs: list[dict[str, Any]]) -> None:
    job = component(docs, "Job", ONE_OFF)
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # A hook runs before the release's ConfigMap exists: the settings are in the Job itself.
    config = component(docs, "ConfigMap", "config")["data"]
    env = {e["name"]: e["value"] for e in container(job)["env"]}
    assert env == config


def test_web_probes_and_drain(docs: list[dict[str, Any]]) -> None:
    web = component(docs, "Deployment", "web")
    pod = web["spec"]["template"]["spec"]
    main = container(web)
    assert main["ports"] == [{"name": "http", "containerPort": WEB_PORT}]
    assert main["readinessProbe"]["httpGet"] == {"path": READINESS_PATH, "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "http"}
    assert main["startupProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "http"}
    drain = int(component(docs, "ConfigMap", "config")["data"]["GATEWAY_DRAIN_SECONDS"])
    sleep = main["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + drain
    # Never fewer ready pods than wanted during a rollout.
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_pdb_and_hpa_point_at_the_web_pods(docs: list[dict[str, Any]]) -> None:
    web = component(docs, "Deployment", "web")
    labels = web["spec"]["template"]["metadata"]["labels"]
    assert web["spec"]["selector"]["matchLabels"] == labels
    service = component(docs, "Service", "web")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = component(docs, "PodDisruptionBudget", "web")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] >= 1
    hpa = component(docs, "HorizontalPodAutoscaler", "web")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": web["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    # The HPA owns the replica count.
    assert "replicas" not in web["spec"]


def test_beat_is_a_singleton(docs: list[dict[str, Any]]) -> None:
    beat = component(docs, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_every_pod_is_non_root_with_a_read_only_root(docs: list[dict[str, Any]]) -> None:
    dockerfile_user = next(line.split()[1] for line in (REPO / "Dockerfile").read_text()
                           .splitlines() if line.startswith("USER "))
    uid, gid = (int(x) for x in dockerfile_user.split(":"))
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) \
            == (uid, gid)
        main = container(doc)
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]


def test_secrets_come_from_an_existing_secret(docs: list[dict[str, Any]],
                                              values: dict[str, Any]) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"]
    secret = values["existingSecret"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            refs = [e["secretRef"]["name"] for e in container(doc)["envFrom"] if "secretRef" in e]
            assert refs == [secret], doc["metadata"]["name"]
    assert not SECRET_SETTINGS & set(values["config"])


def test_config_names_real_settings(docs: list[dict[str, Any]]) -> None:
    source = settings_read_by_turnpike()
    config = component(docs, "ConfigMap", "config")["data"]
    unknown = [name for name in config
               if name not in NOT_TURNPIKE_SETTINGS and not is_read_by_settings(name, source)]
    assert unknown == []
    assert config["GATEWAY_USAGE_SINK"] == "redis"


def test_without_the_usage_writer_and_the_autoscaler() -> None:
    docs = render(CHART, values={"usagewriter": {"enabled": False},
                                 "web": {"autoscaling": {"enabled": False}, "replicas": 3,
                                         "metrics": {"scrape": True}}})
    kinds = {(d["kind"], d["metadata"]["labels"]["app.kubernetes.io/component"]) for d in docs}
    assert ("Deployment", "usagewriter") not in kinds
    assert ("HorizontalPodAutoscaler", "web") not in kinds
    # Then every gateway writes its usage rows itself.
    assert component(docs, "ConfigMap", "config")["data"]["GATEWAY_USAGE_SINK"] == "database"
    web = component(docs, "Deployment", "web")
    assert web["spec"]["replicas"] == 3
    annotations = web["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(WEB_PORT)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", [
    {"config": {"SECRET_KEY": "not-here"}},  # secrets belong in the existing Secret
    {"config": {"DATABASE_URL": "postgres://turnpike:pw@db/turnpike"}},
    {"web": {"replica": 3}},  # a misspelt key
    {"web": {"autoscaling": {"minReplicas": "two"}}},
    {"existingSecret": ""},
])
def test_the_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="values don't meet the specifications"):
        render(CHART, values=values)
