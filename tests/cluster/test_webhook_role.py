"""varmor's webhook against the real API server: TLS with the registered caBundle,
mutation of Pods and Deployments, dynamic registration, outages, rotation, uninstall.

The webhook and leader tasks run in this process (the same code `varmor run` runs);
there is no kube-proxy, so the configurations use clientConfig.url on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client
from prometheus_client import REGISTRY

from tests import helpers
from tests.helpers import wait_for
from varmor import api
from varmor.app import add_common_arguments
from varmor.dev.cluster import free_port
from varmor.kube import paths
from varmor.kube.client import ApiException, raw_request
from varmor.kube.context import Health, RoleContext
from varmor.kube.kube import MERGE_PATCH, Kube
from varmor.kube.serverversion import ServerVersion
from varmor.reconcile import cleanup as webhook_cli
from varmor.reconcile import webhooks as leader
from varmor.webhook import role as webhook_role

pytestmark = pytest.mark.cluster


@contextlib.asynccontextmanager
async def audited(api_client: Any, install_ns: str, excluded: tuple[str, ...]) -> AsyncIterator[Any]:
    """One audit pass whose findings go to a running policy controller, which writes them
    into the policies' status; yields the audit's result while the controller runs."""
    from tests.cluster.conftest import InProcessLeader

    run = await InProcessLeader(api_client, install_ns).start()
    cache = leader.PolicyCache(api_client)
    cache_task = asyncio.create_task(cache.run())
    try:
        await cache.synced_event.wait()
        yield await leader.audit_once(api_client, cache, excluded, run.controller.take_audit)
    finally:
        cache_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cache_task
        await run.stop()


async def unprotected_after_audit(
    api_client: Any, varmor: Varmor, leader_ctx: RoleContext, namespace: str, name: str
) -> dict[str, Any]:
    """Audit once (one unprotected workload expected for policy `name`) and return the
    policy's `Unprotected` condition once the controller has written the finding."""
    custom = client.CustomObjectsApi(api_client)

    async def counted() -> Any:
        got = await custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, name
        )
        return got if got["status"].get("unprotectedWorkloads") == 1 else None

    async with audited(api_client, varmor.install_ns, _excluded(leader_ctx)) as result:
        assert result.per_policy[(namespace, name)] == 1
        got = await wait_for(counted)
    (cond,) = [c for c in got["status"]["conditions"] if c["type"] == "Unprotected"]
    assert cond["status"] == "True"
    return dict(cond)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Varmor:
    """A running webhook (+ leader tasks) with its own install namespace and names."""

    api_client: Any
    install_ns: str
    name: str
    port: int
    server: ServerVersion
    extra: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def args(self) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_common_arguments(parser)
        webhook_role.add_arguments(parser)
        return parser.parse_args(
            [
                f"--namespace={self.install_ns}",
                "--bind-address=127.0.0.1",
                f"--webhook-port={self.port}",
                f"--webhook-url=https://127.0.0.1:{self.port}",
                f"--webhook-config-name={self.name}",
                f"--cert-secret={self.name}-tls",
                "--unprotected-audit-interval=0",
                *self.extra,
            ]
        )

    def ctx(self) -> RoleContext:
        return RoleContext(
            args=self.args(), api_client=self.api_client, health=Health(), roles=frozenset(), server=self.server
        )

    def start_webhook(self) -> RoleContext:
        ctx = self.ctx()
        self.tasks.append(asyncio.create_task(webhook_role.run(ctx)))
        return ctx

    def start_leader(self) -> RoleContext:
        """The leader's webhook tasks (certificates, registration); audits are not run
        here (interval 0): the audit tests run one with a policy controller as its sink."""

        async def no_audits(_result: Any) -> None:
            raise AssertionError("the audit runs only when a test asks for it")

        ctx = self.ctx()
        self.tasks.append(asyncio.create_task(leader.run_leader_tasks(ctx, no_audits)))
        return ctx

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()

    async def mutating(self) -> dict[str, Any] | None:
        try:
            return await raw_request(
                self.api_client, "GET", paths.webhook_config_path("MutatingWebhookConfiguration", self.name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def validating(self) -> dict[str, Any] | None:
        try:
            return await raw_request(
                self.api_client, "GET", paths.webhook_config_path("ValidatingWebhookConfiguration", self.name)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def registered_kinds(self) -> set[str]:
        config = await self.mutating()
        return {w["rules"][0]["resources"][0] for w in (config or {}).get("webhooks") or []}


@pytest.fixture
async def varmor(api_client: Any, crds: list[str]) -> AsyncIterator[Varmor]:
    core = client.CoreV1Api(api_client)
    install_ns = f"varmor-{uuid.uuid4().hex[:8]}"
    await core.create_namespace({"metadata": {"name": install_ns}})
    v = Varmor(api_client, install_ns, install_ns, free_port(), await ServerVersion.read(api_client, interval=0))
    try:
        yield v
    finally:
        await v.stop()
        await webhook_cli.delete_webhook_configurations(api_client, v.name)
        await core.delete_namespace(install_ns)


# -- objects ------------------------------------------------------------------------


def policy_body(
    name: str,
    namespace: str | None,
    kind: str,
    *,
    selector: dict[str, Any] | None = None,
    target_name: str | None = None,
) -> dict[str, Any]:
    """A RuntimeDefault policy; cluster-scoped when `namespace` is None."""
    return helpers.policy(
        name, namespace, kind, cluster=namespace is None, selector=selector or {}, target_name=target_name
    )


async def create_policy(
    api_client: Any, body: dict[str, Any], *, accept: bool = True, install_ns: str = "varmor"
) -> dict[str, Any]:
    """Create a policy and, standing in for the leader, accept it (status.profileName)."""
    custom = client.CustomObjectsApi(api_client)
    ns = body["metadata"].get("namespace")
    if ns:
        created: dict[str, Any] = await custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, body
        )
    else:
        created = await custom.create_cluster_custom_object(
            api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, body
        )
    if accept:
        await set_profile_name(api_client, created, api.profile_name(ns, body["metadata"]["name"], install_ns))
    return created


async def set_profile_name(api_client: Any, policy: dict[str, Any], profile: str) -> None:
    meta = policy["metadata"]
    ns = meta.get("namespace")
    resource = api.VARMOR_POLICY if ns else api.VARMOR_CLUSTER_POLICY
    path = paths.custom_path(resource, ns, meta["name"]) + "/status"
    await raw_request(api_client, "PATCH", path, body={"status": {"profileName": profile}}, content_type=MERGE_PATCH)


async def delete_cluster_policy(api_client: Any, name: str) -> None:
    with contextlib.suppress(ApiException):
        await client.CustomObjectsApi(api_client).delete_cluster_custom_object(
            api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, name
        )


# A Deployment with an init container and two containers; a Pod with one container.
deployment = functools.partial(helpers.deployment, typed=False, replicas=1, containers=("app", "side"), init=("init",))
pod = functools.partial(helpers.pod, containers=("c",))


def profile_of(container: Any) -> str | None:
    sc = container.security_context
    prof = sc.app_armor_profile if sc else None
    return prof.localhost_profile if prof and prof.type == "Localhost" else None


# -- tests --------------------------------------------------------------------------


async def test_api_server_admits_pods_and_deployments_through_varmor(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    webhook_ctx = varmor.start_webhook()
    varmor.start_leader()
    # No policies: the configuration exists but sends varmor nothing.
    await wait_for(varmor.mutating)
    assert not (await varmor.mutating() or {}).get("webhooks")
    await create_policy(
        api_client,
        policy_body("web", namespace, "Deployment", selector={"matchLabels": {"app": "web"}}),
        install_ns=varmor.install_ns,
    )
    await create_policy(
        api_client,
        policy_body("pods", namespace, "Pod", selector={"matchLabels": {"app": "p"}}),
        install_ns=varmor.install_ns,
    )
    await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments", "pods"}))
    config = await varmor.mutating()
    assert config is not None
    deploy_hook = next(w for w in config["webhooks"] if w["rules"][0]["resources"] == ["deployments"])
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]} in deploy_hook[
        "namespaceSelector"
    ]["matchExpressions"]
    secret = await core.read_namespaced_secret(f"{varmor.name}-tls", varmor.install_ns)
    assert base64.b64decode(deploy_hook["clientConfig"]["caBundle"]) == base64.b64decode(secret.data["ca.crt"])
    await wait_for(lambda: _ready(webhook_ctx.health))

    # The API server picks up configuration changes asynchronously: retry with new names.
    counter = iter(range(1000))

    async def deployment_mutated() -> Any:
        created = await apps.create_namespaced_deployment(namespace, deployment(f"web-{next(counter)}", {"app": "web"}))
        spec = created.spec.template.spec
        return created if profile_of(spec.containers[0]) else None

    dep = await wait_for(deployment_mutated, timeout=30, interval=0.3)
    spec = dep.spec.template.spec
    assert [profile_of(c) for c in spec.containers] == [f"varmor-{namespace}-web"] * 2
    assert profile_of(spec.init_containers[0]) == f"varmor-{namespace}-web"  # init containers too
    plain = await apps.create_namespaced_deployment(namespace, deployment("plain", {"app": "other"}))
    assert profile_of(plain.spec.template.spec.containers[0]) is None
    assert plain.spec.template.metadata.annotations is None

    async def pod_mutated() -> Any:
        created = await core.create_namespaced_pod(namespace, pod(f"p-{next(counter)}", {"app": "p"}))
        return created if profile_of(created.spec.containers[0]) else None

    p = await wait_for(pod_mutated, timeout=30, interval=0.3)
    assert profile_of(p.spec.containers[0]) == f"varmor-{namespace}-pods"
    # A pod no policy selects is not even sent to varmor: the objectSelector keeps it away.
    pod_reviews = {"endpoint": "mutate", "kind": "Pod", "operation": "CREATE"}
    seen = sum(metric("varmor_admission_requests_total", **pod_reviews, result=r) for r in ("not_selected", "mutated"))
    untouched = await core.create_namespaced_pod(namespace, pod("untouched", {"app": "q"}))
    assert profile_of(untouched.spec.containers[0]) is None
    after = sum(metric("varmor_admission_requests_total", **pod_reviews, result=r) for r in ("not_selected", "mutated"))
    assert after == seen

    # The Deployment's pods inherit the profile from the mutated template.
    async def rs_pod() -> Any:
        pods = await core.list_namespaced_pod(namespace, label_selector="app=web")
        return [x for x in pods.items if x.metadata.owner_references]

    owned = (await wait_for(rs_pod))[0]
    assert profile_of(owned.spec.containers[0]) == f"varmor-{namespace}-web"

    # Re-applying the mutated Deployment (UPDATE) is a no-op for varmor.
    labels = {"endpoint": "mutate", "kind": "Deployment", "operation": "UPDATE", "result": "unchanged"}
    before = metric("varmor_admission_requests_total", **labels)
    attempts = 0
    for _ in range(10):
        latest = await apps.read_namespaced_deployment(dep.metadata.name, namespace)
        latest.metadata.labels["touched"] = "yes"
        attempts += 1  # a write that loses to the controller's status update was admitted too
        try:
            updated = await apps.replace_namespaced_deployment(dep.metadata.name, namespace, latest)
            break
        except ApiException as exc:
            if exc.status != 409:
                raise
    assert updated.metadata.generation == latest.metadata.generation  # the template did not change
    assert metric("varmor_admission_requests_total", **labels) == before + attempts


async def _has(kinds: Awaitable[set[str]], wanted: set[str]) -> bool:
    return wanted <= await kinds


async def _ready(health: Health) -> bool:
    return not health.failing()


async def test_conflict_is_reported_on_the_losing_policy(api_client: Any, namespace: str, varmor: Varmor) -> None:
    """An Event at admission, and a `Conflict` condition from the leader's audit that
    stays as long as the targets overlap (Events expire; the condition does not)."""
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    varmor.start_webhook()
    leader_ctx = varmor.start_leader()
    await create_policy(
        api_client, policy_body("by-name", namespace, "Deployment", target_name="web"), install_ns=varmor.install_ns
    )
    await create_policy(
        api_client,
        policy_body("by-label", namespace, "Deployment", selector={"matchLabels": {"app": "web"}}),
        install_ns=varmor.install_ns,
    )
    await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments"}))

    async def created() -> Any:
        with contextlib.suppress(ApiException):
            await apps.delete_namespaced_deployment("web", namespace)
        dep = await apps.create_namespaced_deployment(namespace, deployment("web", {"app": "web"}))
        return dep if profile_of(dep.spec.template.spec.containers[0]) else None

    dep = await wait_for(created, interval=0.5)
    assert profile_of(dep.spec.template.spec.containers[0]) == api.profile_name(namespace, "by-name", varmor.install_ns)

    async def conflict_event() -> Any:
        events = await core.list_namespaced_event(namespace)
        return [e for e in events.items if e.reason == "Conflict" and e.involved_object.name == "by-label"]

    event = (await wait_for(conflict_event))[0]
    assert "by-name" in event.message

    excluded = leader.webhook_settings.from_args(leader_ctx.args).excluded_namespaces
    custom = client.CustomObjectsApi(api_client)
    plural = api.VARMOR_POLICY.plural

    async def lost() -> Any:
        got = await custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, "by-label")
        return [c for c in got["status"].get("conditions", []) if c["type"] == "Conflict"]

    # The audit's findings reach the status through the policy controller (its one writer).
    async with audited(api_client, varmor.install_ns, excluded):
        (cond,) = await wait_for(lost)
    assert (cond["status"], cond["reason"]) == ("True", "LostToPolicy")
    assert f"Deployment {namespace}/web" in cond["message"]
    winner = await custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, "by-name")
    assert not [c for c in winner["status"].get("conditions", []) if c["type"] == "Conflict"]


async def test_validating_webhook_rejects_uncompilable_raw_rules(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    from varmor.parser import find_parser

    find_parser()  # fails with how to get it (never a skip: the validator would allow with a note)
    custom = client.CustomObjectsApi(api_client)
    varmor.start_webhook()
    varmor.start_leader()
    await wait_for(varmor.validating)
    counter = iter(range(1000))

    async def rejected() -> str | None:
        body = policy_body(f"raw-{next(counter)}", namespace, "Deployment", target_name="web")
        body["spec"]["policy"] = {
            "enforcer": "AppArmor",
            "mode": "EnhanceProtect",
            "enhanceProtect": {"appArmorRawRules": [{"rules": "deny unix addr=@/containerd-shim/**,"}]},
        }
        try:
            await custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, body
            )
        except ApiException as exc:
            return str(exc.body)
        return None

    message = await wait_for(rejected, interval=0.5)
    assert "appArmorRawRules" in message


async def _refused(api_client: Any, namespace: str, rules: str) -> str | None:
    """Create a policy with these raw rules through the API server: its refusal, or None
    when it was admitted (deleted again, so a retry can reuse nothing)."""
    custom = client.CustomObjectsApi(api_client)
    body = policy_body(f"raw-{uuid.uuid4().hex[:8]}", namespace, "Deployment", target_name="web")
    body["spec"]["policy"] = {
        "enforcer": "AppArmor",
        "mode": "EnhanceProtect",
        "enhanceProtect": {"appArmorRawRules": [{"rules": rules}]},
    }
    try:
        await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, body)
    except ApiException as exc:
        return str(exc.body)
    await custom.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, body["metadata"]["name"]
    )
    return None


async def test_a_slow_policy_is_refused_within_the_api_servers_timeout(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    """The compile that fails open today: refused with CompileBudgetExceeded, inside the
    API server's 5 s webhook timeout (a timeout would admit it under failurePolicy Ignore)."""
    varmor.start_webhook()
    varmor.start_leader()
    await wait_for(varmor.validating)
    await wait_for(lambda: _refused(api_client, namespace, "deny unix addr=@/x,"), interval=0.5)  # registered
    message = await _refused(api_client, namespace, helpers.slow_rule())
    assert message is not None
    assert "CompileBudgetExceeded" in message
    assert "appArmorRawRules" in message
    again = await _refused(api_client, namespace, helpers.slow_rule())  # remembered: no second compile
    assert again is not None
    assert "CompileBudgetExceeded" in again


async def test_webhook_accepts_only_the_api_servers_client_certificate(
    api_client: Any, namespace: str, varmor: Varmor, control_plane: Any
) -> None:
    varmor.extra.append(f"--webhook-client-ca={control_plane.webhook_client_ca}")
    varmor.start_webhook()
    varmor.start_leader()
    await wait_for(varmor.validating)
    # The API server presents its webhook client certificate: its calls get answers.
    message = await wait_for(lambda: _refused(api_client, namespace, "deny unix addr=@/x,"), interval=0.5)
    assert "appArmorRawRules" in message
    # Any other caller fails the TLS handshake before reaching /validate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"https://127.0.0.1:{varmor.port}/validate", data=b"{}", ssl=context) as resp,
        ):
            await resp.read()


async def test_webhook_down_admits_with_ignore_and_the_gap_is_visible(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    apps = client.AppsV1Api(api_client)
    leader_ctx = varmor.start_leader()  # registers the webhook; nothing serves it
    body = policy_body("web", namespace, "Deployment", selector={"matchLabels": {"app": "web"}})
    await create_policy(api_client, body, install_ns=varmor.install_ns)
    await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments"}))
    config = await varmor.mutating()
    assert config is not None
    assert config["webhooks"][0]["failurePolicy"] == "Ignore"
    assert config["webhooks"][0]["timeoutSeconds"] == 5
    dep = await apps.create_namespaced_deployment(namespace, deployment("web", {"app": "web"}))
    assert profile_of(dep.spec.template.spec.containers[0]) is None  # admitted, unprotected
    cond = await unprotected_after_audit(api_client, varmor, leader_ctx, namespace, "web")
    assert metric("varmor_unprotected_workloads", kind="Deployment") >= 1
    assert f"Deployment {namespace}/web" in cond["message"]


async def test_certificate_rotation_during_pod_stream_loses_nothing(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    """failurePolicy Fail: any TLS failure during rotation would fail a creation."""
    core = client.CoreV1Api(api_client)
    day = 86400
    varmor.extra = [
        "--webhook-failure-policy=Fail",
        f"--cert-validity-days={4 / day}",
        f"--ca-validity-days={12 / day}",
        "--cert-rotation-grace=1.5",
    ]
    webhook_ctx = varmor.start_webhook()
    varmor.start_leader()
    every_pod = {"matchExpressions": [{"key": "varmor.test/never-set", "operator": "DoesNotExist"}]}
    await create_policy(
        api_client, policy_body("all", namespace, "Pod", selector=every_pod), install_ns=varmor.install_ns
    )
    await wait_for(lambda: _has(varmor.registered_kinds(), {"pods"}))
    await wait_for(lambda: _ready(webhook_ctx.health))
    warm = iter(range(1000))

    async def mutated() -> bool:
        created = await core.create_namespaced_pod(namespace, pod(f"warm-{next(warm)}", {}))
        return profile_of(created.spec.containers[0]) is not None

    await wait_for(mutated, interval=0.3)
    steps = {s: metric("varmor_certificate_rotations_total", step=s) for s in ("staged", "promoted", "stable")}
    reloads = metric("varmor_certificate_reloads_total")
    failures: list[str] = []
    unmutated = 0

    def rotated() -> bool:
        """A whole rotation: staged, promoted, stable, and the serving pair reloaded twice."""
        return (
            all(metric("varmor_certificate_rotations_total", step=s) > before for s, before in steps.items())
            and metric("varmor_certificate_reloads_total") >= reloads + 2
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120  # a bound on failure only: the stream runs until a rotation completed
    created = 0
    while not rotated():
        assert loop.time() < deadline, "no complete certificate rotation within 120 s"
        try:
            made = await core.create_namespaced_pod(namespace, pod(f"s-{created}", {}))
            unmutated += profile_of(made.spec.containers[0]) is None
        except ApiException as exc:
            failures.append(str(exc.body)[:300])
        created += 1
        await asyncio.sleep(0.02)  # a steady stream, not a flood
    # Every creation from before the rotation began until it completed was admitted and mutated.
    assert created > 0
    assert failures == []
    assert unmutated == 0


async def test_uninstall_leaves_no_webhook_configuration(api_client: Any, namespace: str, varmor: Varmor) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    owner = f"{varmor.name}-manager"
    await rbac.create_cluster_role({"metadata": {"name": owner}, "rules": []})
    varmor.extra = [f"--owner-cluster-role={owner}"]
    try:
        varmor.start_leader()
        await create_policy(
            api_client, policy_body("web", namespace, "Deployment", target_name="web"), install_ns=varmor.install_ns
        )
        await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments"}))
        config = await varmor.mutating()
        assert config is not None
        assert config["metadata"]["ownerReferences"][0]["name"] == owner
        # The pre-delete hook removes both configurations (the leader, still running,
        # may recreate them at once: policies of other tests come and go)...
        deleted = await webhook_cli.cleanup(api_client, varmor.name, resources=False)
        assert deleted == [
            f"MutatingWebhookConfiguration/{varmor.name}",
            f"ValidatingWebhookConfiguration/{varmor.name}",
        ]
        # ...a leader still running may recreate them (here: on a policy change)...
        await create_policy(
            api_client, policy_body("db", namespace, "StatefulSet", target_name="db"), install_ns=varmor.install_ns
        )
        await wait_for(varmor.mutating)
        # ...and deleting the chart's ClusterRole garbage-collects whatever is left.
        await rbac.delete_cluster_role(owner)

        async def gone() -> bool:
            return await varmor.mutating() is None and await varmor.validating() is None

        await wait_for(gone, timeout=30)
        # The leader refuses to register without its owner (it is being uninstalled).
        withheld = metric("varmor_webhook_registration_withheld_total")
        await create_policy(
            api_client, policy_body("ds", namespace, "DaemonSet", target_name="ds"), install_ns=varmor.install_ns
        )
        await wait_for(lambda: metric("varmor_webhook_registration_withheld_total") > withheld)
        assert await gone()
        core = client.CoreV1Api(api_client)

        async def secret_gone() -> bool:
            try:
                await core.read_namespaced_secret(f"{varmor.name}-tls", varmor.install_ns)
            except ApiException as exc:
                return exc.status == 404
            return False

        await wait_for(secret_gone, timeout=30)
    finally:
        with contextlib.suppress(ApiException):
            await rbac.delete_cluster_role(owner)


async def test_external_certificate_secret_is_served_and_published(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    """cert-manager mode: varmor never writes the Secret, it serves it and publishes ca.crt."""
    import datetime as dt

    from varmor.certs import pki

    core = client.CoreV1Api(api_client)
    ca = pki.new_ca("external-ca", dt.timedelta(hours=1))
    leaf = pki.issue(ca, "external", dt.timedelta(hours=1), ip_addresses=("127.0.0.1",))
    data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": ca.cert_pem}
    await core.create_namespaced_secret(
        varmor.install_ns,
        {
            "metadata": {"name": f"{varmor.name}-tls"},
            "type": "kubernetes.io/tls",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        },
    )
    varmor.extra = ["--cert-mode=external", "--webhook-failure-policy=Fail"]
    varmor.start_webhook()
    varmor.start_leader()
    every_pod = {"matchExpressions": [{"key": "varmor.test/never-set", "operator": "DoesNotExist"}]}
    await create_policy(
        api_client, policy_body("all", namespace, "Pod", selector=every_pod), install_ns=varmor.install_ns
    )
    await wait_for(lambda: _has(varmor.registered_kinds(), {"pods"}))
    config = await varmor.mutating()
    assert config is not None
    assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) == ca.cert_pem
    counter = iter(range(1000))

    async def mutated() -> bool:
        created = await core.create_namespaced_pod(namespace, pod(f"e-{next(counter)}", {}))
        return profile_of(created.spec.containers[0]) == f"varmor-{namespace}-all"

    await wait_for(mutated, interval=0.3)
    secret = await core.read_namespaced_secret(f"{varmor.name}-tls", varmor.install_ns)
    assert "signer.key" not in (secret.data or {})


async def test_racing_creators_agree_on_one_certificate_secret(api_client: Any, varmor: Varmor) -> None:
    import datetime as dt

    from varmor.certs import bundle as certbundle
    from varmor.certs.store import SecretStore

    now = dt.datetime.now(dt.UTC)
    cfg = certbundle.CertConfig(dns_names=("varmor-webhook.x.svc",))
    stores = [SecretStore(api_client, varmor.install_ns, "race-tls") for _ in range(4)]
    bundles = [certbundle.new_bundle(cfg, now) for _ in stores]
    secrets = await asyncio.gather(*(s.create_if_absent(b) for s, b in zip(stores, bundles, strict=True)))
    winners = {certbundle.from_secret(s).serving.cert_pem for s in secrets}
    assert len(winners) == 1
    assert winners <= {b.serving.cert_pem for b in bundles}


# -- every container kind, and opt-outs the policy decides on ----------------------------

OPT_OUT_SIDE = api.VARMOR_APPARMOR_ANNOTATION_PREFIX + "side"


async def _mutated_deployment(api_client: Any, namespace: str, name: str, template: dict[str, Any]) -> Any:
    """Create Deployments `<name>-<n>` (template entries replaced by `template`) until the
    webhook mutates one (the API server picks up the configuration asynchronously); the
    ones admitted before are deleted, so the audit sees only the mutated one."""
    apps = client.AppsV1Api(api_client)
    counter = iter(range(1000))

    async def created() -> Any:
        body = deployment(f"{name}-{next(counter)}", {"app": name}, template=template)
        got = await apps.create_namespaced_deployment(namespace, body)
        if profile_of(got.spec.template.spec.containers[0]):
            return got
        await apps.delete_namespaced_deployment(got.metadata.name, namespace)
        return None

    return await wait_for(created, interval=0.3)


def _excluded(ctx: RoleContext) -> tuple[str, ...]:
    from varmor import settings

    return settings.from_args(ctx.args).excluded_namespaces


def _template(annotations: dict[str, str], **app_security: Any) -> dict[str, Any]:
    spec = helpers.pod_spec(("app", "side"), init=("init",))
    if app_security:
        spec["containers"][0]["securityContext"] = app_security
    return {"metadata": {"labels": {"app": "web"}, "annotations": annotations}, "spec": spec}


async def test_init_containers_and_disallowed_opt_outs_get_the_profile(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    """A policy without allowOptOut overrides the varmor annotation, the beta annotation
    (on an init container) and `Unconfined`, and the audit finds everything protected."""
    varmor.start_webhook()
    leader_ctx = varmor.start_leader()
    body = policy_body("web", namespace, "Deployment", selector={"matchLabels": {"app": "web"}})
    await create_policy(api_client, body, install_ns=varmor.install_ns)
    await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments"}))
    profile = api.profile_name(namespace, "web", varmor.install_ns)
    annotations = {OPT_OUT_SIDE: "unconfined", api.K8S_APPARMOR_ANNOTATION_PREFIX + "init": "unconfined"}
    dep = await _mutated_deployment(
        api_client, namespace, "web", _template(annotations, appArmorProfile={"type": "Unconfined"})
    )
    spec = dep.spec.template.spec
    assert [profile_of(c) for c in spec.containers + spec.init_containers] == [profile] * 3
    assert "unconfined" not in dep.spec.template.metadata.annotations.values()
    async with audited(api_client, varmor.install_ns, _excluded(leader_ctx)) as result:
        assert result.per_policy[(namespace, "web")] == 0


async def test_allowed_opt_out_is_kept_and_counted_unprotected(api_client: Any, namespace: str, varmor: Varmor) -> None:
    varmor.start_webhook()
    leader_ctx = varmor.start_leader()
    body = policy_body("web", namespace, "Deployment", selector={"matchLabels": {"app": "web"}})
    body["spec"]["policy"]["allowOptOut"] = True
    await create_policy(api_client, body, install_ns=varmor.install_ns)
    await wait_for(lambda: _has(varmor.registered_kinds(), {"deployments"}))
    dep = await _mutated_deployment(api_client, namespace, "web", _template({OPT_OUT_SIDE: "unconfined"}))
    profile = api.profile_name(namespace, "web", varmor.install_ns)
    spec = dep.spec.template.spec
    assert [profile_of(c) for c in spec.containers + spec.init_containers] == [profile, None, profile]
    assert dep.spec.template.metadata.annotations[OPT_OUT_SIDE] == "unconfined"
    cond = await unprotected_after_audit(api_client, varmor, leader_ctx, namespace, "web")
    assert f"{dep.metadata.name}: container side opted out (allowed by spec.policy.allowOptOut)" in cond["message"]


async def test_an_ephemeral_container_added_to_a_selected_pod_gets_the_profile(
    api_client: Any, namespace: str, varmor: Varmor
) -> None:
    """`kubectl debug` adds ephemeral containers through pods/ephemeralcontainers."""
    core = client.CoreV1Api(api_client)
    varmor.start_webhook()
    varmor.start_leader()
    await create_policy(
        api_client,
        policy_body("dbg", namespace, "Pod", selector={"matchLabels": {"app": "dbg"}}),
        install_ns=varmor.install_ns,
    )
    await wait_for(lambda: _has(varmor.registered_kinds(), {"pods", "pods/ephemeralcontainers"}))
    profile = api.profile_name(namespace, "dbg", varmor.install_ns)
    counter = iter(range(1000))

    async def pod_mutated() -> Any:
        created = await core.create_namespaced_pod(namespace, pod(f"d-{next(counter)}", {"app": "dbg"}))
        return created if profile_of(created.spec.containers[0]) else None

    p = await wait_for(pod_mutated, interval=0.3)
    assert profile_of(p.spec.containers[0]) == profile
    debug = {"name": "debugger", "image": "busybox", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}
    current = await raw_request(api_client, "GET", paths.workload_path("Pod", namespace, p.metadata.name))
    current["spec"]["ephemeralContainers"] = [debug]
    await core.replace_namespaced_pod_ephemeralcontainers(p.metadata.name, namespace, current)
    debugged = await core.read_namespaced_pod(p.metadata.name, namespace)
    assert [profile_of(c) for c in debugged.spec.ephemeral_containers] == [profile]


async def test_without_admission_policy_the_webhook_limits_an_agent_to_its_own_armornode(
    api_client: Any, kubeconfig: str, namespace: str, varmor: Varmor
) -> None:
    """For clusters without ValidatingAdmissionPolicy (< 1.30): the leader registers the
    node-report guard and the webhook refuses an agent's write of another node's ArmorNode,
    against the real API server, with impersonated node-bound tokens."""
    from tests.cluster.test_chart_rbac import armornode, impersonating, refused

    rbac = client.RbacAuthorizationV1Api(api_client)
    user = f"system:serviceaccount:{namespace}:agent"
    role = f"{namespace}-agent"
    rules = [{"apiGroups": [api.GROUP], "resources": ["armornodes", "armornodes/status"], "verbs": ["create", "patch"]}]
    await rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    binding = {
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
    }
    await rbac.create_cluster_role_binding(binding)
    node_a, node_b = f"{namespace}-a", f"{namespace}-b"
    kube = Kube(api_client)
    varmor.extra = [f"--node-report-guard-accounts={user}"]
    try:
        varmor.start_webhook()
        varmor.start_leader()

        async def guarded() -> bool:
            config = await varmor.validating()
            return any(w["name"] == "armornodes.validate.varmor.org" for w in (config or {}).get("webhooks", []))

        await wait_for(guarded)
        async with impersonating(kubeconfig, user, node_a) as on_a, impersonating(kubeconfig, user) as no_claim:
            agent_a, anonymous = Kube(on_a), Kube(no_claim)

            async def b_refused() -> str:
                return await refused(agent_a.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_b)))

            message = await wait_for(b_refused)  # until the webhook serves with its certificate
            assert f"may write only ArmorNode {node_a!r}, not {node_b!r}" in message
            message = await refused(
                anonymous.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_a))
            )
            assert "no authentication.kubernetes.io/node-name claim" in message
            await agent_a.request("POST", paths.custom_path(api.ARMOR_NODE), body=armornode(node_a))
    finally:
        for name in (node_a, node_b):
            with contextlib.suppress(ApiException):
                await kube.request("DELETE", paths.custom_path(api.ARMOR_NODE, name=name))
        await rbac.delete_cluster_role_binding(role)
        await rbac.delete_cluster_role(role)
