"""The chart lints, renders across a matrix of values, and every object validates
strictly against the schemas of the oldest supported, the first field-bearing and the
newest Kubernetes release, rendered for that release."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from varmor.dev.chart import CHART_DIR, is_hook, render

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "split": {"topology": "split", "manager": {"replicas": 3}},
    "external-certs": {"certificates": {"mode": "external", "secretName": "my-tls"}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "fail-closed": {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 3}},
    "no-cleanup": {"cleanup": {"enabled": False}},
    "leader-eligible": {"leaderEligibleNodes": {"varmor.org/leader": "true", "pool": "system"}},
    "kern-log": {"agent": {"auditLog": "/var/log/kern.log", "supplementalGroups": [4]}},
    "opt-outs": {"networkPolicy": {"enabled": False}, "nodeReportGuard": {"enabled": False}},
    "metrics-from": {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "mon"}}}]}},
    "host-network": {
        "hostNetwork": True,
        "webhook": {"url": "https://10.1.2.3:8443"},
        "apiServer": {"host": "10.1.2.3"},
    },
    "host-network-split": {
        "topology": "split",
        "hostNetwork": True,
        "apiServer": {"host": "api.example", "port": 6443},
    },
}
TOPOLOGIES = {k: MATRIX[k] for k in ("defaults", "split", "leader-eligible")}
AGENT_CAPABILITIES = {"drop": ["ALL"], "add": ["MAC_ADMIN"]}
NO_CAPABILITIES = {"drop": ["ALL"]}
WEBHOOK_CONFIG_KINDS = {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"}
KUBE_VERSIONS = ("1.29.0", "1.30.0", "1.37.0")
NO_SCHEMA_KINDS = {"ServiceMonitor"}  # a CRD-defined kind; not in the upstream schemas


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_lint_is_clean_in_strict_mode(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not errors, errors


@pytest.mark.parametrize(
    "bad",
    [
        {"bogus": 1},
        {"topology": "cluster"},
        {"webhook": {"failurePolicy": "Maybe"}},
        {"topology": "split", "leaderEligibleNodes": {"a": "b"}},  # split has no all-roles pods
        {"agent": {"supplementalGroups": ["adm"]}},
    ],
)
def test_schema_rejects_unknown_or_invalid_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(bad)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_rendered_objects_validate_strictly(values: dict[str, Any], version: str) -> None:
    for obj in render(values, kube_version=f"v{version}"):
        if obj["kind"] in NO_SCHEMA_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container_args(obj: dict[str, Any]) -> list[str]:
    return list(obj["spec"]["template"]["spec"]["containers"][0]["args"])


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("DaemonSet", "Deployment", "Job")]


def roles_of(pod: dict[str, Any]) -> str:
    """The roles a pod's `varmor run` runs; "" for other commands (the cleanup hook)."""
    roles = [a.removeprefix("--roles=") for a in pod["containers"][0]["args"] if a.startswith("--roles=")]
    return roles[0] if roles else ""


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_nothing_runs_privileged_and_capabilities_are_exact(values: dict[str, Any]) -> None:
    """Only a process that loads profiles gets a capability, and only CAP_MAC_ADMIN; every
    other container runs non-root with none."""
    for pod in pod_specs(render(values)):
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx.get("privileged") is not True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["readOnlyRootFilesystem"] is True
            if "agent" in roles_of(pod).split(","):
                assert ctx["capabilities"] == AGENT_CAPABILITIES
                assert ctx["runAsUser"] == 0  # AppArmor policy admin needs euid 0 as well
                assert ctx["appArmorProfile"] == {"type": "Unconfined"}
                assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            else:
                assert ctx["capabilities"] == NO_CAPABILITIES
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not [k for k in ("hostPID", "hostIPC") if pod.get(k)]
        # The node's network only by choice, and only for the pods the API server calls.
        serves_webhook = "webhook" in roles_of(pod).split(",")
        assert pod.get("hostNetwork", False) is (bool(values.get("hostNetwork")) and serves_webhook)


def test_the_api_server_address_and_webhook_url_reach_every_pod_that_needs_them() -> None:
    values = MATRIX["host-network"]
    objects = render(values)
    for pod in pod_specs(objects):
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.1.2.3", "443")
    [allinone] = [p for p in pod_specs(objects) if "webhook" in roles_of(p).split(",")]
    assert "--webhook-url=https://10.1.2.3:8443" in allinone["containers"][0]["args"]
    assert allinone["dnsPolicy"] == "ClusterFirstWithHostNet"
    for bad in (
        {"webhook": {"url": "https://x/mutate"}},
        {"webhook": {"url": "http://x"}},
        {"apiServer": {"host": "a;b"}},
    ):
        with pytest.raises(Exception, match="values don't meet the specifications"):
            render(bad)


@pytest.mark.parametrize("topology", ["allinone", "split"])
def test_a_webhook_client_ca_makes_every_webhook_pod_require_the_api_servers_certificate(topology: str) -> None:
    import datetime as dt

    from varmor.certs import pki

    pem = pki.new_ca("api-server-webhook-client-ca", dt.timedelta(days=1)).cert_pem.decode()
    objects = render({"topology": topology, "hostNetwork": True, "webhook": {"clientCA": pem}})
    [config_map] = by_kind(objects, "ConfigMap")
    assert config_map["data"]["ca.crt"] == pem
    for pod in pod_specs(objects):
        args = pod["containers"][0]["args"]
        serves = "webhook" in roles_of(pod).split(",")
        assert ("--webhook-client-ca=/etc/varmor/webhook-client-ca/ca.crt" in args) is serves
        mounts = {m["name"]: m for m in pod["containers"][0].get("volumeMounts", [])}
        assert ("webhook-client-ca" in mounts) is serves
    with pytest.raises(Exception, match="values don't meet the specifications"):
        render({"webhook": {"clientCA": "not a certificate"}})


def test_default_topology_is_one_daemonset_running_every_role_as_the_manager() -> None:
    objects = render({})
    assert not by_kind(objects, "Deployment")
    (ds,) = by_kind(objects, "DaemonSet")
    assert "--roles=webhook,leader,agent" in container_args(ds)
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "varmor-manager"
    assert "affinity" not in pod  # every node
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_leader_eligible_nodes_split_the_nodes_between_two_daemonsets() -> None:
    """Matching nodes run every role as the manager; every other node runs only the agent
    as the agent. The affinities are complements, and the pod selectors are disjoint."""
    selector = {"varmor.org/leader": "true", "pool": "system"}
    daemonsets = {d["metadata"]["name"]: d for d in by_kind(render({"leaderEligibleNodes": selector}), "DaemonSet")}
    assert set(daemonsets) == {"varmor-allinone", "varmor-agent"}
    full, agent = daemonsets["varmor-allinone"], daemonsets["varmor-agent"]
    assert (roles_of(full["spec"]["template"]["spec"]), roles_of(agent["spec"]["template"]["spec"])) == (
        "webhook,leader,agent",
        "agent",
    )
    assert full["spec"]["template"]["spec"]["serviceAccountName"] == "varmor-manager"
    assert agent["spec"]["template"]["spec"]["serviceAccountName"] == "varmor-agent"

    def terms(ds: dict[str, Any]) -> list[list[dict[str, Any]]]:
        affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        return [t["matchExpressions"] for t in required]

    # all-roles: one term, every label must match (AND)
    assert terms(full) == [[{"key": k, "operator": "In", "values": [v]} for k, v in sorted(selector.items())]]
    # agent-only: any label differs or is missing (OR of terms)
    expected = []
    for k, v in sorted(selector.items()):
        expected += [[{"key": k, "operator": "NotIn", "values": [v]}], [{"key": k, "operator": "DoesNotExist"}]]
    assert terms(agent) == expected
    components = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for d in daemonsets.values()}
    assert len(components) == 2
    assert "varmor.org/webhook" not in agent["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("values", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_no_role_may_create_or_list_webhook_configurations(values: dict[str, Any]) -> None:
    """Helm creates both configurations (no webhooks of its own); every role that touches
    them is limited to their names and never creates."""
    objects = render(values)
    configs = [o for o in objects if o["kind"].endswith("WebhookConfiguration")]
    assert sorted(c["kind"] for c in configs) == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    for config in configs:
        assert config["metadata"]["name"] == "varmor"
        assert "webhooks" not in config  # the leader's field: never reset by helm upgrade
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role["rules"]:
            if WEBHOOK_CONFIG_KINDS & set(rule["resources"]):
                assert rule["resourceNames"] == ["varmor"], role["metadata"]["name"]
                assert not {"create", "list", "watch", "*"} & set(rule["verbs"]), role["metadata"]["name"]
            assert "*" not in rule["verbs"] + rule["resources"]


def test_node_report_guard_binds_the_agents_to_their_own_armornode() -> None:
    objects = render({}, namespace="vns")
    (policy,) = by_kind(objects, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["armornodes", "armornodes/status", "armorbehaviors"]
    (condition,) = policy["spec"]["matchConditions"]
    for sa in ("varmor-agent", "varmor-manager"):
        assert f"'system:serviceaccount:vns:{sa}'" in condition["expression"]
    assert not by_kind(render({"nodeReportGuard": {"enabled": False}}), "ValidatingAdmissionPolicy")
    assert not any("--node-report-guard-accounts" in a for o in pod_specs(objects) for a in o["containers"][0]["args"])


GUARD_ARG = (
    "--node-report-guard-accounts=system:serviceaccount:vns:varmor-agent,system:serviceaccount:vns:varmor-manager"
)


@pytest.mark.parametrize("values", TOPOLOGIES.values(), ids=TOPOLOGIES.keys())
def test_before_1_30_the_webhook_guards_node_reports_and_the_agent_pod_is_unconfined_by_annotation(
    values: dict[str, Any],
) -> None:
    """No ValidatingAdmissionPolicy and no appArmorProfile field exist before 1.30: the
    webhook takes the guard over (reading the node of the pod a token is bound to), and the
    agent's pods opt out of the runtime's default profile through the beta annotation."""
    objects = render(values, namespace="vns", kube_version="v1.29.15")
    assert not by_kind(objects, "ValidatingAdmissionPolicy")
    workloads = [o for o in objects if o["kind"] in ("DaemonSet", "Deployment")]
    guarded = [GUARD_ARG in container_args(o) for o in workloads]
    runs_webhook = [any(a.startswith("--roles=") and "webhook" in a for a in container_args(o)) for o in workloads]
    assert guarded == runs_webhook
    assert any(guarded)
    for ds in by_kind(objects, "DaemonSet"):
        template = ds["spec"]["template"]
        assert template["metadata"]["annotations"] == {
            "container.apparmor.security.beta.kubernetes.io/varmor": "unconfined"
        }
        assert "appArmorProfile" not in template["spec"]["containers"][0]["securityContext"]
    (role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-webhook")]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in role["rules"]
    newer = render(values, namespace="vns", kube_version="v1.30.0")
    (role,) = [r for r in by_kind(newer, "Role") if r["metadata"]["name"].endswith("-webhook")]
    assert all("pods" not in rule["resources"] for rule in role["rules"])
    for ds in by_kind(newer, "DaemonSet"):
        assert "annotations" not in ds["spec"]["template"]["metadata"]
        assert ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["appArmorProfile"] == {
            "type": "Unconfined"
        }


def test_releases_before_1_29_are_refused_with_the_reason() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"needs Kubernetes 1.29 or later .* this cluster runs v1.28.15"):
        render({}, kube_version="v1.28.15")


def test_network_policy_admits_only_the_webhook_and_metrics_ports() -> None:
    (netpol,) = by_kind(render({}), "NetworkPolicy")
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    ports = [p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]]
    assert ports == ["webhook", "metrics"]
    assert not any("from" in rule for rule in netpol["spec"]["ingress"])  # the API server: anywhere
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_split_topology_runs_webhook_and_leader_unprivileged() -> None:
    objects = render({"topology": "split"})
    (deploy,) = by_kind(objects, "Deployment")
    (ds,) = by_kind(objects, "DaemonSet")
    assert "--roles=webhook,leader" in container_args(deploy)
    assert "--roles=agent" in container_args(ds)
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "varmor-manager"
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == "varmor-agent"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == NO_CAPABILITIES
    assert "privileged" not in pod["containers"][0]["securityContext"]
    assert by_kind(objects, "PodDisruptionBudget")
    # the agent's account is bound to the agent's ClusterRole only
    bindings = {b["roleRef"]["name"]: b for b in by_kind(objects, "ClusterRoleBinding") if not is_hook(b)}
    subjects = {name: {s["name"] for s in b["subjects"]} for name, b in bindings.items()}
    assert subjects == {
        "varmor-webhook": {"varmor-manager"},
        "varmor-leader": {"varmor-manager"},
        "varmor-agent": {"varmor-agent"},
    }


def test_external_certificates_name_the_users_secret() -> None:
    (ds,) = by_kind(render({"certificates": {"mode": "external", "secretName": "my-tls"}}), "DaemonSet")
    assert "--cert-secret=my-tls" in container_args(ds)
    assert "--cert-mode=external" in container_args(ds)


def test_the_uninstall_hook_deletes_behaviour_models_unless_kept() -> None:
    """Models have no owner (they outlive their policy): the hook deletes them, and may
    delete them, unless `cleanup.keepModels`."""
    for values, kept in (({}, False), ({"cleanup": {"keepModels": True}}, True)):
        objects = render(values)
        (job,) = by_kind(objects, "Job")
        assert ("--keep-models" in container_args(job)) is kept
        (role,) = [r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-cleanup")]
        assert "armorprofilemodels" in {res for rule in role["rules"] for res in rule["resources"]}
