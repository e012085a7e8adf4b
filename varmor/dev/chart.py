"""Render the Helm chart offline (Helm 4 through helm-python-sdk, a dev dependency)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from varmor.dev.paths import K8S_VERSION, REPO_ROOT

CHART_DIR = REPO_ROOT / "chart"


def render(
    values: dict[str, Any] | None = None,
    *,
    namespace: str = "varmor",
    release: str = "varmor",
    kube_version: str = K8S_VERSION,
) -> list[dict[str, Any]]:
    """All objects the chart would install (templates, not CRDs), in file order, for a
    cluster running `kube_version` (`.Capabilities.KubeVersion`; the chart differs
    before 1.30)."""
    import helm_python as helm
    from helm_python import _native

    chart = helm.Chart.load(CHART_DIR)
    # Chart.render does not pass Helm's `kube_version` render option through; the engine
    # underneath takes it (`helm template --kube-version`).
    options = {"name": release, "namespace": namespace, "is_install": True, "kube_version": kube_version}
    rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(options))
    manifests: dict[str, str] = json.loads(rendered)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if not path.endswith(".yaml"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def crds() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})
