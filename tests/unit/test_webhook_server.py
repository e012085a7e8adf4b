"""The admission app in-process over real HTTP: uid echo, 400 not 500, size limit, fuzzing.

The app runs on its own loop in a thread so hypothesis (synchronous) can drive it with
a plain keep-alive HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests import helpers
from varmor import api
from varmor.admission.jsonpatch import apply_patch
from varmor.admission.selection import PolicyIndex
from varmor.webhook.mutate import MutationState
from varmor.webhook.server import build_app
from varmor.webhook.validate import PolicyValidator

MAX_BODY = 64 * 1024


def _policy(pname: str, kind: str, namespace: str | None, **target: Any) -> dict[str, Any]:
    """An accepted RuntimeDefault policy (cluster-scoped when `namespace` is None)."""
    return helpers.policy(
        pname,
        namespace,
        cluster=namespace is None,
        target={"kind": kind, **target},
        profile=f"varmor-{namespace or 'cluster-varmor'}-{pname}",
        meta={"uid": f"u-{pname}", "creationTimestamp": "2025-01-01T00:00:00Z"},
    )


POLICIES = [
    _policy("all-pods", "Pod", None, selector={}),
    _policy("web", "Deployment", "demo", selector={"matchLabels": {"app": "web"}}),
    _policy("web-name", "Deployment", "demo", name="web"),
    _policy("sts", "StatefulSet", "demo", selector={"matchExpressions": [{"key": "a", "operator": "Exists"}]}),
    _policy("pending", "DaemonSet", "demo", selector={}) | {"status": {}},
]


class Server:
    def __init__(self) -> None:
        self.state = MutationState(index=PolicyIndex(POLICIES), synced=True, use_field=True)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = build_app(self.state, PolicyValidator("varmor"), max_body=MAX_BODY)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server().start()
    try:
        yield srv
    finally:
        srv.stop()


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()  # the server may close after a 413; reconnect once
            self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
        return resp.status, data


@pytest.fixture(scope="module")
def http_client(server: Server) -> Iterator[Client]:
    c = Client(server.port)
    yield c
    c.conn.close()


def review(
    obj: Any, *, kind: str = "Pod", group: str = "", operation: str = "CREATE", namespace: str = "demo"
) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "abc-123",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "operation": operation,
                "namespace": namespace,
                "name": "x",
                "object": obj,
            },
        }
    )


# A Pod with one container and one init container.
pod = functools.partial(helpers.pod, labels={}, init=("i",), init_image="x")


def answer(data: bytes) -> dict[str, Any]:
    doc = orjson.loads(data)
    assert doc["apiVersion"] == "admission.k8s.io/v1"
    assert doc["kind"] == "AdmissionReview"
    response: dict[str, Any] = doc["response"]
    return response


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_pod_is_mutated_and_uid_echoed(http_client: Client) -> None:
    obj = pod()
    status, data = http_client.post("/mutate", review(obj))
    assert status == 200
    resp = answer(data)
    assert resp["uid"] == "abc-123"
    assert resp["allowed"] is True
    assert resp["patchType"] == "JSONPatch"
    patched = apply_patch(obj, orjson.loads(base64.b64decode(resp["patch"])))
    assert patched["spec"]["containers"][0]["securityContext"]["appArmorProfile"] == {
        "type": "Localhost",
        "localhostProfile": "varmor-cluster-varmor-all-pods",
    }
    # Init containers get the profile too (opting out is the policy's decision, contracts.md).
    assert (
        patched["spec"]["initContainers"][0]["securityContext"]["appArmorProfile"]
        == (patched["spec"]["containers"][0]["securityContext"]["appArmorProfile"])
    )
    # Re-admission of the mutated object changes nothing, and is counted as such.
    labels = {"endpoint": "mutate", "kind": "Pod", "operation": "CREATE"}
    unchanged = metric("varmor_admission_requests_total", **labels, result="unchanged")
    mutated = metric("varmor_admission_requests_total", **labels, result="mutated")
    status, data = http_client.post("/mutate", review(patched))
    assert "patch" not in answer(data)
    assert metric("varmor_admission_requests_total", **labels, result="unchanged") == unchanged + 1
    assert metric("varmor_admission_requests_total", **labels, result="mutated") == mutated


def test_deployment_name_match_wins_and_conflict_is_reported(http_client: Client) -> None:
    before = metric("varmor_policy_conflicts_total", kind="Deployment")
    dep = {
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}},
    }
    _status, data = http_client.post("/mutate", review(dep, kind="Deployment", group="apps", operation="UPDATE"))
    resp = answer(data)
    patched = apply_patch(dep, orjson.loads(base64.b64decode(resp["patch"])))
    prof = patched["spec"]["template"]["spec"]["containers"][0]["securityContext"]["appArmorProfile"]
    assert prof["localhostProfile"] == "varmor-demo-web-name"
    assert any("takes precedence" in w for w in resp["warnings"])
    assert metric("varmor_policy_conflicts_total", kind="Deployment") == before + 1


def test_unselected_excluded_and_pending(http_client: Client, server: Server) -> None:
    dep = {"metadata": {"name": "other"}, "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}}
    _, data = http_client.post("/mutate", review(dep, kind="Deployment", group="apps"))
    assert "patch" not in answer(data)
    _, data = http_client.post("/mutate", review(pod(), namespace="kube-system"))
    assert "patch" not in answer(data)
    before = metric("varmor_admission_unconfined_total", kind="DaemonSet", reason="policy_pending")
    _, data = http_client.post("/mutate", review(dep, kind="DaemonSet", group="apps"))
    resp = answer(data)
    assert "patch" not in resp
    assert "not ready" in resp["warnings"][0]
    assert metric("varmor_admission_unconfined_total", kind="DaemonSet", reason="policy_pending") == before + 1
    # Pods are immutable: UPDATE is never patched; wrong groups are ignored.
    _, data = http_client.post("/mutate", review(pod(), operation="UPDATE"))
    assert "patch" not in answer(data)
    _, data = http_client.post("/mutate", review(dep, kind="Deployment", group="extensions"))
    assert "patch" not in answer(data)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "Expected `object`, got `array`"),
        (orjson.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}), "expected apiVersion"),
        (orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}), "request must be"),
        (review(pod()).replace(b'"abc-123"', b"7"), "request.uid"),
        (review(pod()).replace(b'"kind":"Pod"', b'"kind":3'), "request.kind.kind"),
        (review({"spec": {"containers": "nope"}}), "request.object"),
    ],
)
def test_malformed_requests_get_400_with_reason(http_client: Client, body: bytes, reason: str) -> None:
    status, data = http_client.post("/mutate", body)
    assert status == 400
    assert reason in orjson.loads(data)["error"]


def test_oversized_request_gets_413(http_client: Client) -> None:
    big = pod()
    big["metadata"]["annotations"] = {"x": "y" * (MAX_BODY + 10)}
    status, _ = http_client.post("/mutate", review(big))
    assert status == 413
    status, _ = http_client.post("/mutate", review(pod()))  # and the server is fine afterwards
    assert status == 200


def test_validate_denies_bad_policy_with_reason(http_client: Client) -> None:
    bad = _policy("bad", "Deployment", "demo", name="web")
    bad["spec"]["policy"]["enforcer"] = "BPF"
    _, data = http_client.post("/validate", review(bad, kind="VarmorPolicy", group=api.GROUP))
    resp = answer(data)
    assert resp["allowed"] is False
    assert "AppArmor" in resp["status"]["message"]
    good = _policy("good", "Deployment", "demo", name="web")
    _, data = http_client.post("/validate", review(good, kind="VarmorPolicy", group=api.GROUP))
    assert answer(data)["allowed"] is True
    moved = _policy("good", "Deployment", "demo", name="other")
    body = orjson.loads(review(moved, kind="VarmorPolicy", group=api.GROUP, operation="UPDATE"))
    body["request"]["oldObject"] = good
    _, data = http_client.post("/validate", orjson.dumps(body))
    assert "immutable" in answer(data)["status"]["message"]


def test_validate_compiles_raw_rules(http_client: Client) -> None:
    from varmor.parser import find_parser

    find_parser()  # fails with how to get it (never a skip: the validator would allow with a note)
    pol = _policy("raw", "Deployment", "demo", name="web")
    pol["spec"]["policy"] = {
        "enforcer": "AppArmor",
        "mode": "EnhanceProtect",
        "enhanceProtect": {"appArmorRawRules": [{"rules": "deny unix addr=@/containerd-shim/**,"}]},
    }
    _, data = http_client.post("/validate", review(pol, kind="VarmorPolicy", group=api.GROUP))
    resp = answer(data)
    assert resp["allowed"] is False, resp
    pol["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [{"rules": "deny /etc/shadow r,"}]
    _, data = http_client.post("/validate", review(pol, kind="VarmorPolicy", group=api.GROUP))
    assert answer(data)["allowed"] is True


def _deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
@pytest.mark.parametrize("depth", [1_000, 1_500, 4_000])
def test_deeply_nested_json_gets_a_400_not_a_500(http_client: Client, path: str, depth: int) -> None:
    status, data = http_client.post(path, _deep_json(depth))
    assert status == 400, data
    # Deep inside the object, where the decoders go on their own (a policy's selector, a
    # Deployment's template), and in a field /mutate skips.
    pol = _policy("deep", "Deployment", "demo", selector={"matchLabels": "DEEP"})
    kind, group = ("VarmorPolicy", api.GROUP) if path == "/validate" else ("Deployment", "apps")
    obj = pol if path == "/validate" else {"metadata": {"name": "x"}, "spec": {"template": "DEEP"}, "x": "DEEP"}
    body = review(obj, kind=kind, group=group).replace(b'"DEEP"', _deep_json(depth))
    status, data = http_client.post(path, body)
    assert status in (200, 400), data
    if status == 400:
        assert "nested too deeply" in orjson.loads(data)["error"]
    elif path == "/validate":
        assert answer(data)["allowed"] is False


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_hostile_bodies_never_get_a_5xx(http_client: Client, path: str) -> None:
    huge = "x" * (MAX_BODY // 3)
    pol = _policy("h", "Deployment", "demo", name="web")
    policies = (
        {**pol, "spec": {"target": huge, "policy": [huge]}},
        {**pol, "spec": {"target": {"kind": "Deployment", "name": huge}, "policy": pol["spec"]["policy"]}},
        {**pol, "spec": 7},
        {**pol, "metadata": []},
        [1, 2],
        huge,
    )
    bodies = [review({"metadata": {"name": huge}}), review(pod() | {"spec": huge})]
    bodies += [review(p, kind="VarmorPolicy", group=api.GROUP) for p in policies]
    bodies.append(
        orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": huge}})
    )
    for body in bodies:
        status, data = http_client.post(path, body)
        assert status in (200, 400), data
        if status == 200 and path == "/validate" and b"VarmorPolicy" in body:
            assert answer(data)["allowed"] is False, body[:200]


# -- fuzzing ------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=8)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
names = st.sampled_from(["c", "app", "a/b", "~x", ""]) | st.text(max_size=4)
container = st.fixed_dictionaries(
    {"name": names},
    optional={
        "securityContext": st.none()
        | st.just({})
        | st.fixed_dictionaries({"appArmorProfile": st.none() | json_values | st.just({"type": "Unconfined"})})
        | json_values,
    },
)
pod_spec = st.fixed_dictionaries(
    {},
    optional={
        "containers": st.lists(container, max_size=3) | json_values,
        "initContainers": st.lists(container, max_size=1),
        "os": st.just({"name": "windows"}) | json_values,
        "securityContext": json_values,
    },
)
meta = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["web", "x"]) | json_values,
        "labels": st.dictionaries(st.sampled_from(["app", "a"]), st.sampled_from(["web", "1"]), max_size=2)
        | json_values,
        "annotations": st.dictionaries(
            st.sampled_from([api.VARMOR_APPARMOR_ANNOTATION_PREFIX + "c", api.K8S_APPARMOR_ANNOTATION_PREFIX + "c"]),
            st.sampled_from(["unconfined", "localhost/x"]),
        )
        | json_values,
    },
)
pods = st.fixed_dictionaries({}, optional={"metadata": meta | json_values, "spec": pod_spec | json_values})
workloads = st.fixed_dictionaries(
    {},
    optional={
        "metadata": meta,
        "spec": st.fixed_dictionaries({}, optional={"template": pods | json_values}) | json_values,
    },
)
kinds = st.sampled_from(
    [("Pod", ""), ("Deployment", "apps"), ("StatefulSet", "apps"), ("DaemonSet", "apps"), ("Job", "batch")]
)


@st.composite
def reviews(draw: st.DrawFn) -> tuple[bytes, Any]:
    kind, group = draw(kinds)
    obj = draw(pods if kind == "Pod" else workloads)
    request: dict[str, Any] = {
        "uid": draw(st.sampled_from(["u-1", ""]) | json_values),
        "kind": draw(st.just({"group": group, "version": "v1", "kind": kind}) | json_values),
        "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE"]) | json_values),
        "namespace": draw(st.sampled_from(["demo", "kube-system"]) | json_values),
        "object": obj,
    }
    if draw(st.booleans()):
        request["subResource"] = draw(json_values)
    if draw(st.booleans()):
        request["dryRun"] = draw(json_values)
    doc: Any = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    if draw(st.integers(0, 9)) == 0:
        doc = draw(json_values)
    return orjson.dumps(doc), obj


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=reviews(), path=st.sampled_from(["/mutate", "/validate"]))
def test_fuzzed_reviews_never_get_a_5xx(http_client: Client, case: tuple[bytes, Any], path: str) -> None:
    body, obj = case
    status, data = http_client.post(path, body)
    assert status in (200, 400), data
    if status == 200:
        resp = answer(data)
        assert resp["uid"] == orjson.loads(body)["request"]["uid"]
        if "patch" in resp:
            apply_patch(obj, orjson.loads(base64.b64decode(resp["patch"])))  # valid on the object as sent


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=64))
def test_fuzzed_bytes_never_get_a_5xx(http_client: Client, body: bytes) -> None:
    status, _ = http_client.post("/mutate", body)
    assert status == 400


def test_no_planning_errors_during_fuzzing() -> None:
    assert metric("varmor_admission_unconfined_total", kind="Pod", reason="error") == 0
    assert metric("varmor_admission_unconfined_total", kind="Deployment", reason="error") == 0
