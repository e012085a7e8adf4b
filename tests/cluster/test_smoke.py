"""Prove the test control plane is real: schema validation, controllers, webhooks over TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.helpers import deployment, wait_for
from varmor.certs import pki
from varmor.dev.cluster import free_port

pytestmark = pytest.mark.cluster


async def test_crd_structural_schema_rejects_invalid_object(api_client: Any, namespace: str) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.varmor.org"},
        "spec": {
            "group": "smoke.varmor.org",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "maximum": 10}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    try:
        await ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    custom = client.CustomObjectsApi(api_client)

    async def established() -> bool:
        got = await ext.read_custom_resource_definition("widgets.smoke.varmor.org")
        return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

    await wait_for(established)

    def widget(name: str, size: Any) -> dict[str, Any]:
        return {
            "apiVersion": "smoke.varmor.org/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": size},
        }

    ok = await custom.create_namespaced_custom_object("smoke.varmor.org", "v1", namespace, "widgets", widget("ok", 3))
    assert ok["spec"]["size"] == 3
    with pytest.raises(ApiException) as too_big:
        await custom.create_namespaced_custom_object("smoke.varmor.org", "v1", namespace, "widgets", widget("big", 11))
    assert too_big.value.status == 422
    assert "spec.size" in too_big.value.body
    with pytest.raises(ApiException) as wrong_type:
        await custom.create_namespaced_custom_object("smoke.varmor.org", "v1", namespace, "widgets", widget("s", "x"))
    assert wrong_type.value.status == 422


async def test_controller_manager_creates_replicaset_and_pods(api_client: Any, namespace: str) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    await apps.create_namespaced_deployment(namespace, deployment("web", replicas=2))

    async def replicasets() -> list[Any]:
        return list((await apps.list_namespaced_replica_set(namespace)).items)

    rs = (await wait_for(replicasets))[0]
    assert rs.metadata.owner_references[0].kind == "Deployment"

    async def two_pods() -> bool:
        return len((await core.list_namespaced_pod(namespace, label_selector="app=web")).items) == 2

    await wait_for(two_pods)


async def test_api_server_calls_mutating_webhook_over_tls(api_client: Any, namespace: str) -> None:
    ca = pki.new_ca("smoke-webhook-ca", dt.timedelta(hours=1))
    serving = pki.issue(ca, "smoke-webhook", dt.timedelta(hours=1), ip_addresses=("127.0.0.1",))
    calls: list[dict[str, Any]] = []

    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        calls.append(review)
        patch = [{"op": "add", "path": "/metadata/labels/mutated-by", "value": "smoke"}]
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(orjson.dumps(patch)).decode(),
                },
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(serving.cert_pem)
        key.write_bytes(serving.key_pem)
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/mutate", mutate)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_ctx)
    await site.start()
    admission = client.AdmissionregistrationV1Api(api_client)
    config_name = f"smoke-{namespace}"
    await admission.create_mutating_webhook_configuration(
        {
            "metadata": {"name": config_name},
            "webhooks": [
                {
                    "name": "smoke.varmor.org",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/mutate",
                        "caBundle": base64.b64encode(ca.cert_pem).decode(),
                    },
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "rules": [
                        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                    ],
                }
            ],
        }
    )
    core = client.CoreV1Api(api_client)
    pod = {
        "metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    try:
        # The API server picks up new webhook configurations asynchronously.
        async def mutated() -> bool:
            name = f"p{len(calls)}-{asyncio.get_running_loop().time():.0f}".replace(".", "")
            created = await core.create_namespaced_pod(
                namespace, {**pod, "metadata": {"name": name, "labels": {"app": "p"}}}
            )
            return (created.metadata.labels or {}).get("mutated-by") == "smoke"

        await wait_for(mutated, timeout=30, interval=0.5)
        assert calls[-1]["request"]["kind"]["kind"] == "Pod"
        assert calls[-1]["request"]["namespace"] == namespace
    finally:
        await admission.delete_mutating_webhook_configuration(config_name)
        await runner.cleanup()
