"""The chart's Grafana dashboard and PrometheusRule alerts: off by default, rendered and
labelled as asked, every PromQL expression parsed by Prometheus' own parser, every metric
they use documented in docs/metrics.md, and each alert unit-tested with `promtool test
rules` against series shaped like varmor's metrics (tests/data/alerts/<Alert>.yaml: when
it fires, and when it must stay quiet)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from varmor.dev import prometheus as prom
from varmor.dev.chart import CHART_DIR, render

ENABLED: dict[str, Any] = {"dashboard": {"enabled": True}, "alerts": {"enabled": True}}
ALERT_TESTS = Path(__file__).resolve().parents[1] / "data" / "alerts"
ALERTS = (
    "VarmorPolicyNotReady",
    "VarmorAgentLost",
    "VarmorProfileLoadFailed",
    "VarmorUnconfinedAdmissions",
    "VarmorViolationSpike",
    "VarmorCertificateExpiresSoon",
)


@functools.cache
def rendered() -> list[dict[str, Any]]:
    return render(ENABLED)


def tool(path: Path) -> str:
    try:
        return str(prom.require(path))
    except prom.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(prom.promtool_path()), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def all_queries() -> list[prom.Query]:
    objects = rendered()
    return prom.dashboard_queries(prom.dashboard(objects)) + prom.alert_queries(prom.rule_groups(objects))


def test_both_are_off_by_default() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render({})}
    assert ("ConfigMap", "varmor-dashboard") not in kinds
    assert not [k for k in kinds if k[0] == "PrometheusRule"]


def test_lint_is_clean_with_both_enabled() -> None:
    report = helm.lint(CHART_DIR, ENABLED, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not errors, errors


@pytest.mark.parametrize(
    "bad",
    [
        {"dashboard": {"bogus": 1}},
        {"dashboard": {"label": ""}},
        {"alerts": {"bogus": 1}},
        {"alerts": {"policyNotReadyFor": "ten minutes"}},
        {"alerts": {"violationSpike": {"factor": 0}}},
        {"alerts": {"unconfinedAdmissions": {"ignoreReasons": ["a|b"]}}},
        {"alerts": {"runbookBaseUrl": "not a url"}},
    ],
)
def test_schema_rejects_unknown_or_invalid_values(bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        render(bad)


def test_the_dashboard_configmap_carries_the_sidecars_label_and_validates() -> None:
    [cm] = [o for o in rendered() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "varmor-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "varmor"
    kubernetes_validate.validate(cm, "1.37.0", strict=True)
    board = prom.dashboard(rendered())
    assert board["uid"] == "varmor-overview"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    values = {"dashboard": {"enabled": True, "label": "dash", "labelValue": "yes", "namespace": "monitoring"}}
    values["dashboard"]["annotations"] = {"grafana_folder": "Security"}
    [cm] = [o for o in render(values) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "varmor-dashboard"]
    assert cm["metadata"]["labels"]["dash"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Security"}


def test_the_dashboard_has_the_panels_an_operator_expects() -> None:
    """Policies by phase, nodes by state, profile load latency and failures, admission rate,
    latency and unconfined admissions, violations: each panel is there and queries its metric."""
    uses: dict[str, set[str]] = {}
    queries = prom.dashboard_queries(prom.dashboard(rendered()))
    for query, names in zip(queries, prom.metric_names([q.expr for q in queries]), strict=True):
        uses.setdefault(query.source, set()).update(names)
    expected = {
        "Policies by phase": "varmor_policies",
        "Nodes by state": "varmor_nodes",
        "Profile load latency": "varmor_agent_parser_duration_seconds_bucket",
        "Profiles loaded and failed": "varmor_agent_profiles_failed",
        "Profile operations by outcome": "varmor_agent_profile_operations_total",
        "Admission rate by result": "varmor_admission_requests_total",
        "Admission latency": "varmor_admission_duration_seconds_bucket",
        "Unconfined admissions by reason": "varmor_admission_unconfined_total",
        "Violations by action and class": "varmor_violations_total",
    }
    for title, metric in expected.items():
        assert metric in uses.get(title, set()), (title, uses.get(title))


def test_the_prometheusrule_holds_the_alerts_with_runbooks() -> None:
    values = {"alerts": {"enabled": True, "labels": {"release": "prom"}, "ruleLabels": {"team": "sec"}}}
    values["alerts"]["runbookBaseUrl"] = "https://docs.example/varmor/operations.md"
    [rule] = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert tuple(rules) == ALERTS
    operations = (CHART_DIR.parent / "docs" / "operations.md").read_text().lower()
    for name, r in rules.items():
        assert r["labels"]["team"] == "sec"
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        assert r["annotations"]["description"]
        anchor = name.lower()
        assert r["annotations"]["runbook"] == f"docs/operations.md#{anchor}"
        assert r["annotations"]["runbook_url"] == f"https://docs.example/varmor/operations.md#{anchor}"
        assert f"### {anchor}\n" in operations, f"docs/operations.md has no section for {name}"


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    """The alert rule file as rendered, and every dashboard query as a recording rule:
    `promtool check rules` parses each expression (and each annotation template)."""
    groups = prom.rule_groups(rendered())
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(groups))
    queries = prom.dashboard_queries(prom.dashboard(rendered()))
    recording = [{"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    result = promtool("check", "rules", "alerts.yaml", "dashboard.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_every_metric_the_dashboard_and_alerts_use_is_documented() -> None:
    documented = prom.documented_metrics()
    queries = all_queries()
    missing = {
        (q.source, name)
        for q, names in zip(queries, prom.metric_names([q.expr for q in queries]), strict=True)
        for name in names
        if prom.series_metric(name, documented) is None
    }
    assert not missing, f"not in docs/metrics.md: {sorted(missing)}"


def test_the_metric_name_check_reads_histograms_and_refuses_strangers() -> None:
    documented = {"varmor_x_seconds": "histogram", "varmor_y_total": "counter"}
    assert prom.series_metric("varmor_x_seconds_bucket", documented) == "varmor_x_seconds"
    assert prom.series_metric("varmor_y_total", documented) == "varmor_y_total"
    assert prom.series_metric("varmor_y_total_count", documented) is None
    assert prom.series_metric("up", documented) is None
    assert prom.metric_names(['rate(up[5m]) * on (instance) group_left () {__name__="a"}']) == [{"up", "a"}]
    with pytest.raises(ValueError, match="parse error"):
        prom.metric_names(["rate(x[$__rate_interval])"])


def test_every_alert_has_its_rules_test() -> None:
    assert sorted(p.stem for p in ALERT_TESTS.glob("*.yaml")) == sorted(ALERTS)
    for name in ALERTS:
        tests = yaml.safe_load((ALERT_TESTS / f"{name}.yaml").read_text())["tests"]
        cases = [case for t in tests for case in t["alert_rule_test"]]
        assert {c["alertname"] for c in cases} == {name}
        assert any(c["exp_alerts"] for c in cases), f"{name}: no case where it fires"
        assert any(not c["exp_alerts"] for c in cases), f"{name}: no case where it stays quiet"


@pytest.mark.parametrize("alert", ALERTS)
def test_promtool_test_rules(alert: str, tmp_path: Path) -> None:
    """The rendered rules with their default thresholds; annotations cut to the summary so
    the test files state what an operator reads first (check rules covers the rest)."""
    groups = prom.rule_groups(rendered())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    shutil.copy(ALERT_TESTS / f"{alert}.yaml", tmp_path)
    result = promtool("test", "rules", f"{alert}.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_promtool_names_make_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARMOR_CACHE", str(tmp_path))
    with pytest.raises(prom.ToolMissing, match=r"make setup"):
        prom.require(prom.promtool_path())
