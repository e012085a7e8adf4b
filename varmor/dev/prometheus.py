"""The chart's Grafana dashboard and Prometheus alerts, as the tests and the dashboard
picture read them, and the Prometheus tools that check them.

promtool (rule checks and rule unit tests), promql-names (Prometheus' own PromQL parser,
listing the metrics an expression selects) and the Prometheus server (the dashboard
picture) cannot be downloaded here: `hack/build-promtool.sh` compiles them from the Go
module proxy at PROMETHEUS_MODULE_VERSION and caches them.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varmor.dev.paths import REPO_ROOT, cache_dir

# github.com/prometheus/prometheus publishes Prometheus 3.x as Go module v0.3xx.y:
# v0.316.0 is Prometheus 3.16.0. hack/build-promtool.sh reads this line.
PROMETHEUS_MODULE_VERSION = "v0.316.0"
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
# What Grafana puts in place of its interval variables before it sends a query; the
# values are what a 30 s scrape interval gives, any valid duration parses the same.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "30s", "$__range": "3h"}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


class ToolMissing(RuntimeError):
    """A Prometheus tool is not built yet: `make setup` builds it."""


def promtool_path(version: str = PROMETHEUS_MODULE_VERSION) -> Path:
    return cache_dir() / "bin" / f"promtool-{version}" / "promtool"


def promql_names_path(version: str = PROMETHEUS_MODULE_VERSION) -> Path:
    return cache_dir() / "bin" / f"promtool-{version}" / "promql-names"


def prometheus_path(version: str = PROMETHEUS_MODULE_VERSION) -> Path:
    return cache_dir() / "bin" / f"prometheus-{version}" / "prometheus"


def require(path: Path, how: str = "make setup (hack/build-promtool.sh)") -> Path:
    if not path.is_file():
        raise ToolMissing(f"{path} is missing: run `{how}` to build it from the Go module proxy")
    return path


@dataclass(frozen=True)
class Query:
    """One PromQL expression of the dashboard or the alerts, and where it comes from."""

    source: str  # the panel title or the alert name
    expr: str
    legend: str = ""


def _rendered(objects: Iterable[Mapping[str, Any]], kind: str, suffix: str = "") -> Mapping[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"].endswith(suffix):
            return obj
    raise LookupError(f"no {kind} rendered: is it enabled in the values?")


def dashboard(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The dashboard JSON from the rendered ConfigMap."""
    data = _rendered(objects, "ConfigMap", "-dashboard")["data"]
    (text,) = data.values()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def rule_groups(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a Prometheus rule file as promtool reads it."""
    spec: dict[str, Any] = copy.deepcopy(dict(_rendered(objects, "PrometheusRule")["spec"]))
    return spec


def grafana_expr(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """The expression as Grafana sends it, its interval variables replaced."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr


def dashboard_queries(board: Mapping[str, Any], variables: Mapping[str, str] = GRAFANA_VARIABLES) -> list[Query]:
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = grafana_expr(target["expr"], variables)
            queries.append(Query(panel["title"], expr, target.get("legendFormat", "")))
    return queries


def alert_queries(groups: Mapping[str, Any]) -> list[Query]:
    return [Query(rule.get("alert") or rule["record"], rule["expr"]) for g in groups["groups"] for rule in g["rules"]]


def metric_names(exprs: list[str]) -> list[set[str]]:
    """The metric names each expression selects, from Prometheus' parser (promql-names);
    raises ValueError naming the first expression it cannot parse."""
    tool = require(promql_names_path())
    lines = "".join(json.dumps(e) + "\n" for e in exprs)
    out = subprocess.run([str(tool)], input=lines, capture_output=True, text=True, check=True, timeout=60)
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    if len(answers) != len(exprs):
        raise RuntimeError(f"promql-names answered {len(answers)} of {len(exprs)} expressions: {out.stderr}")
    for expr, answer in zip(exprs, answers, strict=True):
        if "error" in answer:
            raise ValueError(f"{expr!r}: {answer['error']}")
    return [set(a["names"]) for a in answers]


def documented_metrics(doc: Path = METRICS_DOC) -> dict[str, str]:
    """Metric name -> type, from the table of docs/metrics.md."""
    metrics = {}
    for line in doc.read_text().splitlines():
        if line.startswith("| `varmor_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            metrics[cells[0].strip("`")] = cells[1]
    return metrics


def series_metric(name: str, documented: Mapping[str, str]) -> str | None:
    """The documented metric a series name belongs to (a histogram's _bucket, _sum and
    _count series belong to the histogram), or None."""
    if name in documented:
        return name
    for suffix in HISTOGRAM_SERIES:
        base = name.removesuffix(suffix)
        if base != name and documented.get(base) == "histogram":
            return base
    return None


def exported_series(exposition: str) -> set[str]:
    """Every series name a scrape can hold, from Prometheus' text exposition: declared
    families (a labelled metric not yet observed has no sample, only its TYPE line) with a
    histogram's _bucket/_sum/_count series and a counter's _total, and every sample name."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SERIES)
            elif kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
