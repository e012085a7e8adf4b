"""Every metric the chart's dashboard and alerts query is one a running varmor exports:
the chart rendered with both enabled, its expressions' metric names read by Prometheus'
parser, checked against scrapes of `varmor run` processes installed from the chart
(tests/product.py: all roles, two stand-in nodes, one of them elected leader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.product import installed
from varmor.dev import prometheus as prom
from varmor.dev.chart import render

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
NODES = ("mon-node-a", "mon-node-b")


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        r.raise_for_status()
        return await r.text()


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(
    api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    try:
        prom.require(prom.promql_names_path())
    except prom.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    objects = render({"dashboard": {"enabled": True}, "alerts": {"enabled": True}})
    queries = prom.dashboard_queries(prom.dashboard(objects)) + prom.alert_queries(prom.rule_groups(objects))
    used = {
        (q.source, name) for q, names in zip(queries, prom.metric_names([q.expr for q in queries]), strict=True)
        for name in names
    }  # fmt: skip
    async with installed(api_client, kubeconfig, namespace, tmp_path, topology="allinone", nodes=NODES) as inst:
        exported: set[str] = set()
        for process in inst.processes:
            exported |= prom.exported_series(await scrape(process.metrics_port))
    assert {"varmor_leader_is_leader", "varmor_agent_ready"} <= exported, sorted(exported)
    missing = sorted((source, name) for source, name in used if name not in exported)
    assert not missing, f"queried but not exported by varmor run: {missing}"
