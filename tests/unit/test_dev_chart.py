"""The chart lints, renders across a matrix of values, and every object validates
strictly against two Kubernetes versions' schemas."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from varmor.dev.chart import CHART_DIR, render

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "split": {"topology": "split", "manager": {"replicas": 3}},
    "external-certs": {"certificates": {"mode": "external", "secretName": "my-tls"}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "fail-closed": {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 3}},
    "no-cleanup": {"cleanup": {"enabled": False}},
}
KUBE_VERSIONS = ("1.30.0", "1.34.0")
NO_SCHEMA_KINDS = {"ServiceMonitor"}  # a CRD-defined kind; not in the upstream schemas


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_lint_is_clean_in_strict_mode(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not errors, errors


@pytest.mark.parametrize("bad", [{"bogus": 1}, {"topology": "cluster"}, {"webhook": {"failurePolicy": "Maybe"}}])
def test_schema_rejects_unknown_or_invalid_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(bad)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_rendered_objects_validate_strictly(values: dict[str, Any], version: str) -> None:
    for obj in render(values):
        if obj["kind"] in NO_SCHEMA_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container_args(obj: dict[str, Any]) -> list[str]:
    return list(obj["spec"]["template"]["spec"]["containers"][0]["args"])


def test_default_topology_is_one_privileged_daemonset_running_every_role() -> None:
    objects = render({})
    assert not by_kind(objects, "Deployment")
    (ds,) = by_kind(objects, "DaemonSet")
    assert "--roles=webhook,leader,agent" in container_args(ds)
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["privileged"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_split_topology_runs_webhook_and_leader_unprivileged() -> None:
    objects = render({"topology": "split"})
    (deploy,) = by_kind(objects, "Deployment")
    (ds,) = by_kind(objects, "DaemonSet")
    assert "--roles=webhook,leader" in container_args(deploy)
    assert "--roles=agent" in container_args(ds)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in pod["containers"][0]["securityContext"]
    assert by_kind(objects, "PodDisruptionBudget")


def test_external_certificates_name_the_users_secret() -> None:
    (ds,) = by_kind(render({"certificates": {"mode": "external", "secretName": "my-tls"}}), "DaemonSet")
    assert "--cert-secret=my-tls" in container_args(ds)
    assert "--cert-mode=external" in container_args(ds)
