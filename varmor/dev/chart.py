"""Render the Helm chart offline (Helm 4 through helm-python-sdk, a dev dependency)."""

from __future__ import annotations

from typing import Any

import yaml

from varmor.dev.paths import REPO_ROOT

CHART_DIR = REPO_ROOT / "chart"


def render(
    values: dict[str, Any] | None = None, *, namespace: str = "varmor", release: str = "varmor"
) -> list[dict[str, Any]]:
    """All objects the chart would install (templates, not CRDs), in file order."""
    import helm_python as helm

    chart = helm.Chart.load(CHART_DIR)
    manifests = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
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
