"""The one place for test helpers, shared by every layer and the benchmarks.

- `wait_for`: poll a (sync or async) condition until it holds, failing with a message
  that names what was awaited. The only way tests wait: never `sleep(n)` then check.
- `ManualClock`: monotonic and wall time that move only when the test says so, with an
  async `sleep` that returns when the clock is advanced past its deadline. Components that
  depend on time take it (see `varmor.clock`), so tests assert on fixed readings.
- Object builders: policies, ArmorProfiles, Deployments, Pods. Test files pick their
  defaults with `functools.partial` instead of defining their own copies.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from varmor import api, loadreport
from varmor.nodeexec.state import sha256_text
from varmor.parser import compile_check
from varmor.policy import parse_policy
from varmor.profile import build_profile

# -- waiting ------------------------------------------------------------------------------


def _describe(predicate: Callable[[], Any]) -> str:
    name = getattr(predicate, "__qualname__", None) or getattr(predicate, "__name__", None) or repr(predicate)
    if name == "<lambda>" or name.endswith(".<lambda>"):
        try:
            source = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            return name
        return source if len(source) <= 200 else source[:200] + "..."
    return name


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.1,
    *,
    what: str | None = None,
) -> Any:
    """Call `predicate` (sync, or returning an awaitable) until its result is truthy and
    return that result. After `timeout` seconds fail with an AssertionError naming the
    condition (`what`, or the predicate's name or source) and its last result. The timeout
    is a bound on failure only: a test never asserts on how long the wait took."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    attempts = 0
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        attempts += 1
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s ({attempts} attempts) waiting for "
                f"{what or _describe(predicate)}; last result: {last!r}"
            )
        await asyncio.sleep(interval)


async def settle(rounds: int = 200) -> None:
    """Let every task that is ready to run do so (no real time passes): for components
    driven by a `ManualClock`, after which they are parked on the clock or an event."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- time -----------------------------------------------------------------------------------

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class ManualClock:
    """Monotonic time, wall time and `sleep` that move only when the test calls `advance`.

    `sleep(s)` parks the caller until the clock is advanced to (or past) its deadline;
    `sleepers()` lists the pending deadlines, so a test can tell a component is parked on
    a timer (and which) before asserting that nothing else happened."""

    def __init__(self, start: float = 1000.0, wall: dt.datetime = T0) -> None:
        self.t = start
        self._start = start
        self._wall = wall
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return self._wall + dt.timedelta(seconds=self.t - self._start)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self.t + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    def sleepers(self) -> list[float]:
        """Deadlines (monotonic) of the sleeps still pending, earliest first."""
        return sorted(deadline for deadline, future in self._sleepers if not future.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleep whose deadline has come."""
        self.t += seconds
        for deadline, future in self._sleepers:
            if deadline <= self.t + 1e-9 and not future.done():
                future.set_result(None)


# -- policies -------------------------------------------------------------------------------


def policy(
    name: str = "web",
    namespace: str | None = None,
    kind: str = "Deployment",
    *,
    cluster: bool = False,
    selector: dict[str, Any] | None = None,
    target_name: str | None = None,
    containers: list[str] | None = None,
    target: dict[str, Any] | None = None,
    enhance: dict[str, Any] | None = None,
    mode: str | None = None,
    profile: str | None = None,
    meta: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A VarmorPolicy (a VarmorClusterPolicy with `cluster=True`).

    The target is `kind` with `target_name`, else `selector` (default `app: <name>`), plus
    `containers`; `target` replaces it whole. `enhance` makes it an EnhanceProtect policy
    with those enhanceProtect fields; otherwise `mode` (default RuntimeDefault). `profile`
    sets status.profileName (as the leader does on acceptance); `meta` adds metadata
    (uid, creationTimestamp, ...); other keywords are spec fields."""
    if target is None:
        target = {"kind": kind}
        if target_name is not None:
            target["name"] = target_name
        else:
            target["selector"] = selector if selector is not None else {"matchLabels": {"app": name}}
        if containers:
            target["containers"] = containers
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata.update(meta or {})
    body: dict[str, Any] = {"enforcer": "AppArmor", "mode": mode or "RuntimeDefault"}
    if enhance is not None:
        body = {"enforcer": "AppArmor", "mode": mode or "EnhanceProtect", "enhanceProtect": enhance}
    doc: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.VARMOR_CLUSTER_POLICY.kind if cluster else api.VARMOR_POLICY.kind,
        "metadata": metadata,
        "spec": {"target": target, "policy": body, **spec},
    }
    if profile is not None:
        doc["status"] = {"profileName": profile}
    return doc


def vpol(name: str, *, kind: str = "VarmorPolicy", rules: list[str] | None = None, **spec: Any) -> dict[str, Any]:
    """An EnhanceProtect policy (hardening `rules`) for Deployments labelled `app: <name>`."""
    enhance = {"hardeningRules": rules or ["disallow-write-core-pattern"]}
    return policy(name, cluster=kind == api.VARMOR_CLUSTER_POLICY.kind, enhance=enhance, **spec)


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    """The status condition of type `ctype` ({} when absent)."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}


def policy_doc(**enhance: Any) -> dict[str, Any]:
    """A valid EnhanceProtect VarmorPolicy (demo in team-a); keyword arguments fill
    enhanceProtect."""
    return policy("demo", "team-a", enhance=enhance)


def with_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of `doc` with dotted `path` set (value None deletes)."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


# -- AppArmor profile texts --------------------------------------------------------------

# Templates with {name}: one the parser rejects, one with a rule the kernel does not enforce.
BAD_TEXT = "abi <abi/3.0>,\nprofile {name} {{\n  bogus rule here,\n}}\n"
NOT_ENFORCED = "abi <abi/3.0>,\nprofile {name} {{\n  file,\n  deny unix addr=@/containerd-shim/**,\n}}\n"


def slow_rule(marks: int = 16) -> str:
    """A valid raw rule whose compile costs exponential time and memory in the parser's DFA
    construction (roughly 10x per two more `?`): the compile-budget tests' load."""
    return f"deny /**a{'?' * marks} r,"


SLOW_TEXT = "abi <abi/3.0>,\nprofile {name} {{\n  file,\n  " + slow_rule().replace("{", "{{") + "\n}}\n"


def profile_text(name: str, **enhance: Any) -> str:
    """A real generated profile; by default one that uses the node-local include."""
    enhance = enhance or {"hardeningRules": ["disallow-mount-disk-device", "disallow-write-core-pattern"]}
    return build_profile(parse_policy(policy_doc(**enhance)), name).text


def assert_compiles(texts: Mapping[str, str]) -> None:
    """Every text compiles with the real apparmor_parser under the pinned ABI."""
    failed = {k: r.message for k, r in compile_check(texts).items() if not r.ok}
    assert not failed, "\n".join(f"{k}: {m}\n{texts[k]}" for k, m in failed.items())


# -- ArmorProfiles --------------------------------------------------------------------------


def armor_profile(
    name: str,
    namespace: str,
    text: str,
    *,
    mode: str = "enforce",
    owner: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ArmorProfile carrying `text` (and its sha256), for a Deployment named web;
    `owner` (a policy object) becomes its controller owner reference."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, **(meta or {})}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner.get("apiVersion", api.API_VERSION),
                "kind": owner.get("kind", api.VARMOR_POLICY.kind),
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
            }
        ]
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.ARMOR_PROFILE.kind,
        "metadata": metadata,
        "spec": {
            "target": {"kind": "Deployment", "name": "web"},
            "profile": {
                "name": name,
                "enforcer": "AppArmor",
                "mode": mode,
                "appArmor": text,
                "sha256": sha256_text(text),
            },
        },
    }


# -- ArmorNodes -----------------------------------------------------------------------------

SHA = "a" * 64


def node(name: str, *, phase: str = "Supported", ready: bool = True, **status: Any) -> dict[str, Any]:
    """An ArmorNode with the given status."""
    return {"metadata": {"name": name}, "status": {"phase": phase, "ready": ready, **status}}


def loaded(sha: str = SHA, ns: str = "demo") -> dict[str, Any]:
    """An ArmorNode's status.profiles with varmor-demo-web loaded at `sha`."""
    return {"varmor-demo-web": {"namespace": ns, "sha256": sha, "mode": "enforce"}}


# -- the API server (cluster tests) -----------------------------------------------------------


class Api:
    """Small raw-JSON helpers for the assertions."""

    def __init__(self, api_client: Any) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    async def create(self, ns: str | None, body: dict[str, Any]) -> dict[str, Any]:
        if ns is None:
            return dict(
                await self.custom.create_cluster_custom_object(
                    api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, body
                )
            )
        return dict(
            await self.custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, body
            )
        )

    async def get_policy(self, ns: str | None, name: str) -> dict[str, Any]:
        if ns is None:
            return dict(
                await self.custom.get_cluster_custom_object(
                    api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, name
                )
            )
        return dict(
            await self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, name)
        )

    async def replace_policy(self, ns: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Replace the policy's spec with `body`'s, as `kubectl edit` would: a 409 (the
        leader wrote status since `body` was read) re-reads and retries."""
        name = body["metadata"]["name"]
        for _ in range(5):
            try:
                if ns is None:
                    return dict(
                        await self.custom.replace_cluster_custom_object(
                            api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, name, body
                        )
                    )
                return dict(
                    await self.custom.replace_namespaced_custom_object(
                        api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, name, body
                    )
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                body = {**await self.get_policy(ns, name), "spec": body["spec"]}
        raise AssertionError(f"policy {name} kept changing under the test")

    async def delete_policy(self, ns: str | None, name: str) -> None:
        if ns is None:
            await self.custom.delete_cluster_custom_object(
                api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, name
            )
        else:
            await self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, name
            )

    async def armor_profile(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                await self.custom.get_namespaced_custom_object(
                    api.GROUP, api.VERSION, ns, api.ARMOR_PROFILE.plural, name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def armor_profiles(self) -> list[dict[str, Any]]:
        listing = await self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.ARMOR_PROFILE.plural)
        return list(listing["items"])

    async def events(self, ns: str, name: str) -> list[str]:
        listing = await self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
        return [e.reason for e in listing.items]


# -- workloads ------------------------------------------------------------------------------


def _containers(names: Iterable[str], image: str | Iterable[str]) -> list[dict[str, Any]]:
    names = list(names)
    images = [image] * len(names) if isinstance(image, str) else list(image)
    return [{"name": n, "image": i} for n, i in zip(names, images, strict=True)]


def pod_spec(
    containers: Iterable[str] = ("c",),
    *,
    init: Iterable[str] = (),
    ephemeral: Iterable[str] = (),
    image: str | Iterable[str] = "busybox",
    init_image: str = "busybox",
    ephemeral_image: str = "busybox",
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if init := list(init):
        spec["initContainers"] = _containers(init, init_image)
    spec["containers"] = _containers(containers, image)
    if ephemeral := list(ephemeral):
        spec["ephemeralContainers"] = _containers(ephemeral, ephemeral_image)
    return spec


def pod(
    name: str = "p",
    labels: dict[str, str] | None = None,
    *,
    typed: bool = False,
    **spec: Any,
) -> dict[str, Any]:
    """A Pod (`spec` keywords go to `pod_spec`); `labels=None` leaves metadata.labels out;
    `typed` adds apiVersion and kind (as an admission review carries them)."""
    meta: dict[str, Any] = {"name": name}
    if labels is not None:
        meta["labels"] = dict(labels)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod"} if typed else {}
    return {**obj, "metadata": meta, "spec": pod_spec(**spec)}


def deployment(
    name: str = "web",
    labels: dict[str, str] | None = None,
    *,
    namespace: str | None = None,
    replicas: int | None = None,
    typed: bool = True,
    template: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A Deployment whose metadata, selector and template all carry `labels` (default
    `app: <name>`); `spec` keywords go to `pod_spec` (default one container, app);
    `template` entries replace the pod template's."""
    labels = {"app": name} if labels is None else labels
    spec.setdefault("containers", ("app",))
    tmpl: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec(**spec)}
    tmpl.update(template or {})
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if namespace is not None:
        meta["namespace"] = namespace
    body: dict[str, Any] = {"selector": {"matchLabels": dict(labels)}, "template": tmpl}
    if replicas is not None:
        body = {"replicas": replicas, **body}
    obj: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment"} if typed else {}
    return {**obj, "metadata": meta, "spec": body}


async def install_crds_with(kubeconfig: str) -> list[str]:
    """varmor's CRDs installed and Established on the cluster of `kubeconfig`."""
    from varmor.dev.install import install_crds
    from varmor.kube.client import new_api_client

    api_client = await new_api_client(kubeconfig)
    try:
        return await install_crds(api_client)
    finally:
        await api_client.close()


# -- what an ArmorNode proves ---------------------------------------------------------------
def node_maps(status: Mapping[str, Any], armor_profiles: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`status` with the per-profile maps tests assert on: `profiles` (loaded at the
    ArmorProfile's current content) and `failures`, as the leader would judge the load
    report against `armor_profiles` (read *after* the ArmorNode, so nothing the node saw is
    newer than them). A status in the earlier format already has both maps."""
    report = loadreport.parse(status)
    if report is None:
        return dict(status)
    profiles: dict[str, Any] = {}
    failures: dict[str, Any] = {}
    for ap in armor_profiles:
        meta, content = ap["metadata"], ap["spec"]["profile"]
        recorded = ap.get("status") or {}
        spec_rv = loadreport.resource_version(meta["resourceVersion"])
        if recorded.get("observedGeneration") == meta.get("generation"):
            spec_rv = loadreport.resource_version(recorded.get("specResourceVersion")) or spec_rv
        if spec_rv is None or meta.get("deletionTimestamp"):
            continue
        seen = max(spec_rv, report.watermark or 0)  # the caller read them after the node
        result, message = loadreport.verdict(report, meta["name"], meta["namespace"], content["sha256"], spec_rv, seen)
        if result == "Loaded":
            profiles[meta["name"]] = {
                "namespace": meta["namespace"],
                "sha256": content["sha256"],
                "mode": content["mode"],
            }
        elif result == "Failed":
            failures[meta["name"]] = {"namespace": meta["namespace"], "sha256": content["sha256"], "message": message}
    return {**status, "profiles": profiles, "failures": failures}


async def armor_node_maps(api_client: client.ApiClient, node: str) -> dict[str, Any] | None:
    """The ArmorNode `node`'s status with `node_maps`' per-profile maps; None before it exists."""
    custom = client.CustomObjectsApi(api_client)
    try:
        obj = await custom.get_cluster_custom_object(api.GROUP, api.VERSION, "armornodes", node)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    listing = await custom.list_cluster_custom_object(api.GROUP, api.VERSION, "armorprofiles")
    return node_maps(obj.get("status") or {}, listing["items"])
