"""The API server itself enforces varmor's schema: no varmor process runs in these tests."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.cluster.conftest import purge_policies
from varmor import api

pytestmark = pytest.mark.cluster


@pytest.fixture(autouse=True)
async def _no_stray_policies(api_client: Any, namespace: str) -> AsyncIterator[None]:
    yield
    await purge_policies(api_client, namespace)


def policy(name: str = "p", **spec: Any) -> dict[str, Any]:
    """An EnhanceProtect policy using every rule list; keywords replace spec fields."""
    enhance = {
        "hardeningRules": ["disallow-write-core-pattern", "DISABLE_CAP_ALL"],
        "attackProtectionRules": [{"rules": ["mitigate-sa-leak"], "targets": ["/bin/sh"]}],
        "vulMitigationRules": ["cgroups-lxcfs-escape-mitigation"],
    }
    doc = helpers.policy(name, selector={"matchLabels": {"app": "web"}}, enhance=enhance)
    doc["spec"].update(spec)
    return doc


async def create(api_client: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    result: dict[str, Any] = await custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, body
    )
    return result


async def rejected(api_client: Any, namespace: str, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as exc:
        await create(api_client, namespace, body)
    assert exc.value.status == 422, exc.value.body
    return str(json.loads(exc.value.body)["message"])


async def test_valid_policy_is_accepted_with_defaults(api_client: Any, namespace: str, crds: list[str]) -> None:
    created = await create(api_client, namespace, policy())
    ep = created["spec"]["policy"]["enhanceProtect"]
    assert ep["privileged"] is False
    assert ep["auditViolations"] is False
    assert ep["allowViolations"] is False
    assert created["spec"]["updateExistingWorkloads"] is False
    # The user's spelling is stored as written; normalisation is only for checking.
    assert ep["hardeningRules"][1] == "DISABLE_CAP_ALL"


async def test_alias_is_accepted(api_client: Any, namespace: str, crds: list[str]) -> None:
    body = policy()
    body["spec"]["policy"]["enhanceProtect"]["hardeningRules"] = ["disallow-load-ebpf"]
    await create(api_client, namespace, body)


async def test_unknown_rule_ids_are_rejected(api_client: Any, namespace: str, crds: list[str]) -> None:
    body = policy()
    body["spec"]["policy"]["enhanceProtect"]["hardeningRules"] = ["disallow-write-core-pattern", "no-such-rule"]
    message = await rejected(api_client, namespace, body)
    assert "hardeningRules[1]" in message
    assert "unknown hardening rule ID" in message
    assert "no-such-rule" in message

    # A known ID in the wrong list: vArmor would silently ignore it there.
    body = policy()
    body["spec"]["policy"]["enhanceProtect"]["vulMitigationRules"] = ["mitigate-sa-leak"]
    assert "vulMitigationRules[0]" in await rejected(api_client, namespace, body)

    body = policy()
    body["spec"]["policy"]["enhanceProtect"]["attackProtectionRules"] = [{"rules": ["disable-shel"]}]
    assert "attackProtectionRules[0].rules[0]" in await rejected(api_client, namespace, body)


async def test_name_xor_selector(api_client: Any, namespace: str, crds: list[str]) -> None:
    both = policy(target={"kind": "Deployment", "name": "web", "selector": {"matchLabels": {"app": "web"}}})
    assert "exactly one of target.name and target.selector" in await rejected(api_client, namespace, both)
    neither = policy(target={"kind": "Deployment"})
    assert "exactly one of target.name and target.selector" in await rejected(api_client, namespace, neither)
    await create(api_client, namespace, policy("by-name", target={"kind": "Deployment", "name": "web"}))


async def test_enums_and_required_fields(api_client: Any, namespace: str, crds: list[str]) -> None:
    bpf = policy()
    bpf["spec"]["policy"]["enforcer"] = "BPF"
    assert 'supported values: "AppArmor"' in await rejected(api_client, namespace, bpf)
    modelling = policy()
    modelling["spec"]["policy"]["mode"] = "BehaviorModeling"
    assert "modelingOptions.duration is required" in await rejected(api_client, namespace, modelling)
    modelling["spec"]["policy"]["modelingOptions"] = {"duration": 0}
    assert "spec.policy.modelingOptions.duration" in await rejected(api_client, namespace, modelling)
    custom = policy()
    custom["spec"]["policy"] = {"enforcer": "AppArmor", "mode": "DefenseInDepth"}
    assert "defenseInDepth is required" in await rejected(api_client, namespace, custom)
    custom["spec"]["policy"]["defenseInDepth"] = {"appArmor": {"profileType": "Custom"}}
    assert "customProfile is required" in await rejected(api_client, namespace, custom)
    job = policy(target={"kind": "Job", "name": "x"})
    assert "spec.target.kind" in await rejected(api_client, namespace, job)
    no_ep = policy()
    del no_ep["spec"]["policy"]["enhanceProtect"]
    assert "enhanceProtect is required" in await rejected(api_client, namespace, no_ep)
    relative = policy()
    relative["spec"]["policy"]["enhanceProtect"]["attackProtectionRules"][0]["targets"] = ["bin/sh"]
    assert "targets[0]" in await rejected(api_client, namespace, relative)


async def test_target_is_immutable(api_client: Any, namespace: str, crds: list[str]) -> None:
    custom = client.CustomObjectsApi(api_client)
    created = await create(api_client, namespace, policy("imm"))
    changed = copy.deepcopy(created)
    changed["spec"]["target"] = {"kind": "Deployment", "name": "other"}
    with pytest.raises(ApiException) as exc:
        await custom.replace_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, "imm", changed
        )
    assert exc.value.status == 422
    assert "target is immutable" in exc.value.body
    # Other fields stay mutable.
    changed = copy.deepcopy(created)
    changed["spec"]["updateExistingWorkloads"] = True
    await custom.replace_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, "imm", changed
    )


async def test_cluster_policy_and_short_names(api_client: Any, crds: list[str]) -> None:
    custom = client.CustomObjectsApi(api_client)
    body = policy("crd-test-cluster")
    body["kind"] = "VarmorClusterPolicy"
    await custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, body)
    try:
        bad = copy.deepcopy(body)
        bad["metadata"]["name"] = "crd-test-cluster-bad"
        bad["spec"]["policy"]["enhanceProtect"]["hardeningRules"] = ["nope"]
        with pytest.raises(ApiException) as exc:
            await custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, bad)
        assert exc.value.status == 422
    finally:
        await custom.delete_cluster_custom_object(
            api.GROUP, api.VERSION, api.VARMOR_CLUSTER_POLICY.plural, "crd-test-cluster"
        )
    ext = client.ApiextensionsV1Api(api_client)
    vcpol = await ext.read_custom_resource_definition(f"{api.VARMOR_CLUSTER_POLICY.plural}.{api.GROUP}")
    assert vcpol.spec.names.short_names == ["vcpol"]
    columns = [c.name for c in vcpol.spec.versions[0].additional_printer_columns]
    for col in ("READY", "STATUS", "PROFILE", "DESIRED", "CURRENT", "AGE"):
        assert col in columns


async def test_armorprofile_name_must_match_profile(api_client: Any, namespace: str, crds: list[str]) -> None:
    custom = client.CustomObjectsApi(api_client)
    ap = {
        "apiVersion": api.API_VERSION,
        "kind": "ArmorProfile",
        "metadata": {"name": "varmor-x-y"},
        "spec": {
            "target": {"kind": "Deployment", "name": "y"},
            "profile": {
                "name": "varmor-x-other",
                "enforcer": "AppArmor",
                "mode": "enforce",
                "appArmor": "profile varmor-x-other {}",
                "sha256": "0" * 64,
            },
        },
    }
    with pytest.raises(ApiException) as exc:
        await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, "armorprofiles", ap)
    assert "name must equal spec.profile.name" in exc.value.body
