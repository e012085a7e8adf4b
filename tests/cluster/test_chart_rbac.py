"""The chart's rendered manifests apply to the real API server, and its RBAC gives each
account what its roles need and nothing beyond it (proven by impersonating the service
accounts). docs/security.md cites these tests for each line of its threat model."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.helpers import wait_for
from tests.product import apply, remove_cluster_scoped
from varmor import api
from varmor.admission.registration import Registration, mutating_configuration
from varmor.dev.chart import is_hook, render
from varmor.kube import paths
from varmor.kube.kube import Kube
from varmor.kube.policycache import PolicyCache
from varmor.reconcile.webhooks import Registrar, RegistrationForbiddenError, resolve_owner

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
NODE_CLAIM = "authentication.kubernetes.io/node-name"
ADMISSION = "admissionregistration.k8s.io"
CRD = api.GROUP


@contextlib.asynccontextmanager
async def chart_installed(
    api_client: Any, namespace: str, values: dict[str, Any]
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    release = f"varmor-{namespace}"  # contains the chart name, so fullname == release
    objects = render(values, namespace=namespace, release=release)
    try:
        for obj in objects:
            await apply(api_client, obj)
        yield release, objects
    finally:
        await remove_cluster_scoped(api_client, objects)


@pytest.fixture
async def split(api_client: Any, namespace: str) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    async with chart_installed(api_client, namespace, {"topology": "split"}) as installed:
        yield installed


@pytest.fixture
async def allinone(api_client: Any, namespace: str) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    async with chart_installed(api_client, namespace, {}) as installed:
        yield installed


async def test_every_rendered_object_applies(split: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = split
    kinds = {o["kind"] for o in objects}
    expected = {"DaemonSet", "Deployment", "ClusterRole", "Role", "Service", "Job", "NetworkPolicy"}
    assert expected | {"MutatingWebhookConfiguration", "ValidatingAdmissionPolicy"} <= kinds
    assert any(is_hook(o) for o in objects)


async def can(
    api_client: Any,
    user: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str = "",
    name: str = "",
    subresource: str = "",
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{user.split(':')[2]}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "group": group,
                "namespace": namespace,
                "name": name,
                "subresource": subresource,
            },
        },
    }
    result = await client.AuthorizationV1Api(api_client).create_subject_access_review(review)
    return bool(result.status.allowed)


Access = tuple[str, str, str, str, str, str]  # verb, resource, group, namespace, name, subresource


async def assert_access(api_client: Any, sa: str, allowed: list[Access], denied: list[Access]) -> None:
    """Every `allowed` request is authorized for `sa`, every `denied` one is refused."""
    for expected, requests in ((True, allowed), (False, denied)):
        for verb, res, group, ns, name, sub in requests:
            got = await can(api_client, sa, verb, res, group=group, namespace=ns, name=name, subresource=sub)
            assert got is expected, (sa, verb, res, group, ns, name, sub)


def webhook_access(namespace: str, release: str) -> list[Access]:
    """What the webhook role calls: policies (informers), its Secret (watch), conflict Events."""
    return [
        ("list", "varmorpolicies", CRD, "", "", ""),
        ("watch", "varmorclusterpolicies", CRD, "", "", ""),
        ("get", "secrets", "", namespace, f"{release}-webhook-tls", ""),
        ("watch", "secrets", "", namespace, f"{release}-webhook-tls", ""),
        ("create", "events", "", "other-ns", "", ""),
    ]


def leader_access(namespace: str, release: str) -> list[Access]:
    return [
        ("watch", "varmorpolicies", CRD, "other-ns", "", ""),
        ("patch", "varmorpolicies", CRD, "other-ns", "p", "status"),
        ("create", "armorprofiles", CRD, "other-ns", "", ""),
        ("delete", "armorprofiles", CRD, "other-ns", "x", ""),
        ("list", "armornodes", CRD, "", "", ""),
        ("patch", "deployments", "apps", "other-ns", "web", ""),
        ("list", "pods", "", "", "", ""),
        ("get", "mutatingwebhookconfigurations", ADMISSION, "", release, ""),
        ("update", "mutatingwebhookconfigurations", ADMISSION, "", release, ""),
        ("update", "validatingwebhookconfigurations", ADMISSION, "", release, ""),
        ("get", "clusterroles", "rbac.authorization.k8s.io", "", f"{release}-leader", ""),
        ("update", "leases", "coordination.k8s.io", namespace, f"{release}-leader", ""),
        ("create", "secrets", "", namespace, "", ""),
        ("update", "secrets", "", namespace, f"{release}-webhook-tls", ""),
    ]


def agent_access() -> list[Access]:
    return [
        ("watch", "armorprofiles", CRD, "", "", ""),
        ("create", "armornodes", CRD, "", "", ""),
        ("get", "armornodes", CRD, "", "node-1", ""),
        ("patch", "armornodes", CRD, "", "node-1", "status"),
        ("get", "nodes", "", "", "node-1", ""),
        ("watch", "pods", "", "", "", ""),  # its node's, by field selector; RBAC cannot say so
        ("create", "events", "", "other-ns", "", ""),
    ]


def never(namespace: str, release: str) -> list[Access]:
    """No varmor account may do any of these, in any topology."""
    return [
        # webhook configurations: Helm creates them; only varmor's two names, never create/list/delete
        ("create", "mutatingwebhookconfigurations", ADMISSION, "", "", ""),
        ("create", "validatingwebhookconfigurations", ADMISSION, "", "", ""),
        ("list", "mutatingwebhookconfigurations", ADMISSION, "", "", ""),
        ("update", "mutatingwebhookconfigurations", ADMISSION, "", "someone-elses", ""),
        ("delete", "mutatingwebhookconfigurations", ADMISSION, "", release, ""),
        ("create", "validatingadmissionpolicies", ADMISSION, "", "", ""),
        ("delete", "validatingadmissionpolicybindings", ADMISSION, "", f"{release}-own-armornode", ""),
        ("update", "varmorpolicies", CRD, "other-ns", "p", ""),  # never the user's spec
        ("patch", "varmorclusterpolicies", CRD, "", "p", ""),
        ("delete", "armornodes", CRD, "", "node-1", ""),
        ("delete", "pods", "", "other-ns", "p", ""),  # rollouts never delete pods
        ("create", "pods", "", "other-ns", "", ""),
        ("update", "deployments", "apps", "other-ns", "web", ""),
        ("create", "deployments", "apps", "other-ns", "", ""),
        ("get", "secrets", "", namespace, "other-secret", ""),
        ("list", "secrets", "", namespace, "", ""),
        ("get", "secrets", "", "kube-system", f"{release}-webhook-tls", ""),
        ("create", "serviceaccounts", "", namespace, f"{release}-agent", "token"),
        ("update", "leases", "coordination.k8s.io", namespace, "other-lease", ""),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io", "", "", ""),
        ("escalate", "clusterroles", "rbac.authorization.k8s.io", "", f"{release}-leader", ""),
        ("bind", "clusterroles", "rbac.authorization.k8s.io", "", "cluster-admin", ""),
        ("impersonate", "serviceaccounts", "", namespace, f"{release}-agent", ""),
        ("patch", "nodes", "", "", "node-1", ""),
        ("list", "nodes", "", "", "", ""),
        ("list", "namespaces", "", "", "", ""),
        ("create", "events", "events.k8s.io", "other-ns", "", ""),
    ]


def agent_never(namespace: str, release: str) -> list[Access]:
    """The leader's and the webhook's rights, which the agent's account lacks."""
    return [
        ("create", "armorprofiles", CRD, "other-ns", "", ""),
        ("list", "varmorpolicies", CRD, "", "", ""),
        ("list", "armornodes", CRD, "", "", ""),
        ("patch", "armornodes", CRD, "", "node-1", ""),  # only the status subresource
        ("get", "secrets", "", namespace, f"{release}-webhook-tls", ""),
        ("patch", "deployments", "apps", "other-ns", "web", ""),
        ("patch", "pods", "", "other-ns", "p", ""),
        ("get", "mutatingwebhookconfigurations", ADMISSION, "", release, ""),
        ("update", "leases", "coordination.k8s.io", namespace, f"{release}-leader", ""),
        ("list", "nodes", "", "", "", ""),
    ]


def sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


async def test_split_manager_can_do_the_webhooks_and_leaders_job_and_nothing_more(
    api_client: Any, namespace: str, split: tuple[str, list[dict[str, Any]]]
) -> None:
    release, _ = split
    denied = [
        *never(namespace, release),
        ("create", "armornodes", CRD, "", "", ""),  # the agents' job
        ("patch", "armornodes", CRD, "", "node-1", "status"),
    ]
    allowed = webhook_access(namespace, release) + leader_access(namespace, release)
    await assert_access(api_client, sa_user(namespace, f"{release}-manager"), allowed, denied)


async def test_agent_can_do_its_job_and_nothing_more(
    api_client: Any, namespace: str, split: tuple[str, list[dict[str, Any]]]
) -> None:
    release, _ = split
    denied = never(namespace, release) + agent_never(namespace, release)
    await assert_access(api_client, sa_user(namespace, f"{release}-agent"), agent_access(), denied)


async def test_allinone_manager_holds_every_role_and_nothing_more(
    api_client: Any, namespace: str, allinone: tuple[str, list[dict[str, Any]]]
) -> None:
    """What root on an allinone node finds: the manager's token, with the three roles'
    rights together (its ArmorNode writes are further limited to its own node below)."""
    release, _ = allinone
    allowed = webhook_access(namespace, release) + leader_access(namespace, release) + agent_access()
    await assert_access(api_client, sa_user(namespace, f"{release}-manager"), allowed, never(namespace, release))
    # the agent-only DaemonSet of leader-eligible installs runs as the agent's account
    agent_denied = never(namespace, release) + agent_never(namespace, release)
    await assert_access(api_client, sa_user(namespace, f"{release}-agent"), agent_access(), agent_denied)


@contextlib.asynccontextmanager
async def impersonating(kubeconfig: str, user: str, node: str | None = None) -> AsyncIterator[Any]:
    """An API client whose every request is made as `user`, with the node claim of a
    node-bound token when `node` is given (what a DaemonSet pod's token carries)."""
    from varmor.kube.client import new_api_client

    api_client = await new_api_client(kubeconfig)
    api_client.set_default_header("Impersonate-User", user)
    if node is not None:
        api_client.set_default_header(f"Impersonate-Extra-{NODE_CLAIM.replace('/', '%2f')}", node)
    try:
        yield api_client
    finally:
        await api_client.close()


async def test_impersonated_manager_is_refused_by_the_real_api(
    api_client: Any, kubeconfig: str, namespace: str, split: tuple[str, list[dict[str, Any]]]
) -> None:
    """Beyond review answers: real requests made as the manager's account."""
    release, _ = split
    async with impersonating(kubeconfig, sa_user(namespace, f"{release}-manager")) as manager:
        core = client.CoreV1Api(manager)
        with pytest.raises(ApiException) as refused:
            await core.list_namespaced_secret("kube-system")
        assert refused.value.status == 403
        admission = client.AdmissionregistrationV1Api(manager)
        with pytest.raises(ApiException) as refused:
            await admission.create_mutating_webhook_configuration({"metadata": {"name": f"{release}-rogue"}})
        assert refused.value.status == 403
        lease = {"metadata": {"name": f"{release}-leader"}, "spec": {"holderIdentity": "x"}}
        created = await client.CoordinationV1Api(manager).create_namespaced_lease(namespace, lease)
        assert created.metadata.name == f"{release}-leader"


async def test_leader_fills_the_charts_configuration_and_never_creates_one(
    api_client: Any, kubeconfig: str, namespace: str, split: tuple[str, list[dict[str, Any]]]
) -> None:
    """The Registrar, as the manager's account: it updates the configuration Helm created
    (keeping Helm's labels and owner, which only `delete` could change), and when that is
    gone it reports the chart's job instead of creating one (403 on create)."""
    release, objects = split
    reg = Registration(name=release, namespace=namespace)
    admission = client.AdmissionregistrationV1Api(api_client)
    async with impersonating(kubeconfig, sa_user(namespace, f"{release}-manager")) as manager:
        registrar = Registrar(manager, reg, PolicyCache(manager), f"{release}-leader")
        owner = await resolve_owner(manager, f"{release}-leader")
        desired = mutating_configuration(reg, [], b"ca", owner)
        assert await registrar._apply_one(desired)
        got = await admission.read_mutating_webhook_configuration(release)
        assert got.metadata.labels[api.MANAGED_BY_LABEL] == "varmor"
        assert got.metadata.labels["app.kubernetes.io/instance"] == release  # Helm's, kept
        assert not await registrar._apply_one(desired)  # nothing differs: no write

        await admission.delete_mutating_webhook_configuration(release)
        with pytest.raises(RegistrationForbiddenError, match="the Helm chart creates it"):
            await registrar._apply_one(desired)
    assert release not in {c.metadata.name for c in (await admission.list_mutating_webhook_configuration()).items}
    assert any(o["kind"] == "MutatingWebhookConfiguration" for o in objects)


def armornode(name: str) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.ARMOR_NODE.kind, "metadata": {"name": name}}


def share(node: str, namespace: str) -> dict[str, Any]:
    """A behaviour share of node `node` (an ArmorBehavior, as an agent writes it)."""
    profile = f"varmor-{namespace}-web"
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.ARMOR_BEHAVIOR.kind,
        "metadata": {"name": f"{profile}.{node}"},
        "spec": {"nodeName": node, "profileName": profile, "records": 1},
    }


STATUS = {"phase": "Supported", "ready": True, "parserVersion": "3.0.8", "agentVersion": "test", "loaded": 0}


async def refused(call: Awaitable[Any]) -> str:
    """The message of the 403 `call` gets ("" if it succeeded; any other error raises)."""
    try:
        await call
    except ApiException as exc:
        if exc.status != 403:
            raise
        return str(exc.body)
    return ""


@pytest.mark.parametrize("topology", ["split", "allinone"])
async def test_an_agent_writes_only_its_own_nodes_armornode(
    api_client: Any, kubeconfig: str, namespace: str, topology: str
) -> None:
    """The ValidatingAdmissionPolicy, against the real API server: an agent whose token
    says node A writes ArmorNode A, and is refused on B (create and status) and without
    the node claim. allinone: the manager's account runs the agent and is held the same."""
    node_a, node_b = f"{namespace}-a", f"{namespace}-b"
    admin = Kube(api_client)
    async with chart_installed(api_client, namespace, {"topology": topology}) as (release, _):
        account = f"{release}-{'agent' if topology == 'split' else 'manager'}"
        user = sa_user(namespace, account)
        try:
            await admin.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_b))
            async with impersonating(kubeconfig, user, node_a) as on_a, impersonating(kubeconfig, user) as no_claim:
                agent_a, anonymous = Kube(on_a), Kube(no_claim)

                async def create_b_refused() -> bool:
                    """The policy takes effect shortly after it is created: until then B is writable."""
                    path = paths.custom_path(api.ARMOR_NODE, name=node_b) + "/status"
                    body = {"status": {**STATUS, "ready": False}}
                    message = await refused(
                        agent_a.request("PATCH", path, body=body, content_type="application/merge-patch+json")
                    )
                    return f"may write only ArmorNode {node_a}, not {node_b}" in message

                await wait_for(create_b_refused, timeout=30)
                other = f"{namespace}-c"
                message = await refused(
                    agent_a.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(other))
                )
                assert f"not {other}" in message
                message = await refused(
                    anonymous.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_a))
                )
                assert "node-bound ServiceAccount token" in message

                await agent_a.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_a))
                path = paths.custom_path(api.ARMOR_NODE, name=node_a) + "/status"
                written = await agent_a.request(
                    "PATCH", path, body={"status": STATUS}, content_type="application/merge-patch+json"
                )
                assert written["status"]["ready"] is True
                assert await agent_a.request("GET", paths.custom_path(api.ARMOR_NODE, name=node_b))

                # Behaviour shares: its own node's only, whatever the name says.
                shares = paths.custom_path(api.ARMOR_BEHAVIOR, namespace)
                message = await refused(agent_a.request("POST", shares, body=share(node_b, namespace)))
                assert f"may write only its own node's ArmorBehaviors, not varmor-{namespace}-web.{node_b}" in message
                assert "node-bound ServiceAccount token" in await refused(
                    anonymous.request("POST", shares, body=share(node_a, namespace))
                )
                own = await agent_a.request("POST", shares, body=share(node_a, namespace))
                own["spec"]["records"] = 2
                own = await agent_a.request("PUT", f"{shares}/{own['metadata']['name']}", body=own)
                moved = {**own, "spec": {**own["spec"], "nodeName": node_b}}
                with pytest.raises(ApiException) as renamed:  # the CRD ties the name to the node, first
                    await agent_a.request("PUT", f"{shares}/{own['metadata']['name']}", body=moved)
                assert renamed.value.status == 422
                assert "name must be \\u003cspec.profileName\\u003e" in str(renamed.value.body)
        finally:
            for name in (node_a, node_b):
                with contextlib.suppress(ApiException):
                    await admin.request("DELETE", paths.custom_path(api.ARMOR_NODE, name=name))
