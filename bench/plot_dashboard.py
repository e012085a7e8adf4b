"""The README's picture of varmor at work: the chart's Grafana dashboard, drawn from its own
queries as a real Prometheus answers them after scraping a real `varmor dev up`.

Grafana cannot be installed from the registries this project reaches, so the panels of
chart/dashboards/varmor.json are plotted with matplotlib instead: the same expressions
(Grafana's $__rate_interval replaced by 30 s, four 5 s scrapes, as Grafana would), sent to
the range-query API of a Prometheus built from the Go module proxy
(`hack/build-promtool.sh --server`). What varmor does meanwhile is real: a local control
plane with varmor running every role (`varmor dev up`, in its own VARMOR_STATE), Deployments
created and scaled through its webhook, a policy whose containers match none of its
workloads (unconfined admissions), the modelling example, a policy update (profile
replace), and AppArmor records appended to the agent's audit log in the kernel's format
(there is no kubelet, so nothing runs to produce them: a low rate, then a burst of
denials). Everything it starts is stopped at the end.

Usage: .venv/bin/pip install -e '.[bench]'
       .venv/bin/python bench/plot_dashboard.py [--minutes 6] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from varmor.dev import prometheus as prom
from varmor.dev.cluster import free_port
from varmor.dev.paths import REPO_ROOT

SCRAPE = 5  # seconds
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval for a 5 s scrape: max(4 * scrape, step + scrape)
NS = "demo"
DENIALS = [  # (operation, class, target, comm): what a shell in an nginx container tries
    ("open", "file", "/etc/shadow", "cat"),
    ("exec", "file", "/bin/sh", "nginx"),
    ("open", "file", "/var/run/secrets/kubernetes.io/serviceaccount/token", "curl"),
    ("mknod", "file", "/tmp/secret-1", "sh"),
    ("create", "net", "", "nc"),
    ("capable", "cap", "", "mount"),
]


def run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def wait_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.5)


def start_prometheus(work: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], str]:
    binary = prom.require(prom.prometheus_path(), "bash hack/build-promtool.sh --server")
    config = {
        "global": {"scrape_interval": f"{SCRAPE}s", "evaluation_interval": f"{SCRAPE}s"},
        "scrape_configs": [{"job_name": "varmor", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (work / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(binary), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ok(f"{url}/-/ready", 60)
    return proc, url


class Activity:
    """What varmor is put through while Prometheus scrapes it."""

    def __init__(self, kubeconfig: Path, audit_log: Path) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.apps, self.custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
        self.audit_log = audit_log
        self.serial = 70000
        self.made: list[str] = []
        self.rng = random.Random(7)

    def deployment(self, name: str, app: str, container: str = "nginx") -> None:
        body = {
            "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": app, "instance": name}},
                "template": {
                    "metadata": {"labels": {"app": app, "instance": name}},
                    "spec": {"containers": [{"name": container, "image": "nginx:1.27"}]},
                },
            },
        }
        self.apps.create_namespaced_deployment(NS, body)
        self.made.append(name)
        if len(self.made) > 12:
            self.apps.delete_namespaced_deployment(self.made.pop(0), NS)

    def scale(self) -> None:
        name = self.rng.choice(self.made)
        self.apps.patch_namespaced_deployment(name, NS, {"spec": {"replicas": self.rng.randint(1, 3)}})

    def apply(self, path_or_obj: Path | dict[str, Any]) -> None:
        docs = yaml.safe_load_all(path_or_obj.read_text()) if isinstance(path_or_obj, Path) else [path_or_obj]
        for doc in docs:
            if doc["kind"] == "Deployment":
                self.apps.create_namespaced_deployment(NS, doc)
            else:
                self.custom.create_namespaced_custom_object("crd.varmor.org", "v1beta1", NS, "varmorpolicies", doc)

    def update_demo_policy(self) -> None:
        rules = {"hardeningRules": ["disallow-write-core-pattern", "disallow-mount-procfs", "disallow-mount"]}
        patch = {"spec": {"policy": {"enhanceProtect": rules}}}
        self.custom.patch_namespaced_custom_object("crd.varmor.org", "v1beta1", NS, "varmorpolicies", "web", patch)

    def records(self, lines: list[str]) -> None:
        with self.audit_log.open("a") as out:
            out.writelines(line + "\n" for line in lines)

    def denials(self, count: int) -> None:
        lines = []
        for _ in range(count):
            operation, klass, target, comm = self.rng.choice(DENIALS)
            self.serial += 1
            name = f' name="{target}"' if target else ""
            lines.append(
                f'type=AVC msg=audit({time.time():.3f}:{self.serial}): apparmor="DENIED" operation="{operation}" '
                f'class="{klass}" profile="varmor-demo-web"{name} pid={4000000 + self.serial} comm="{comm}" '
                'requested_mask="r" denied_mask="r" fsuid=0 ouid=0'
            )
        self.records(lines)

    def drive(self, seconds: float) -> None:
        """Two-second ticks; the events are placed at fractions of the run."""
        start, tick = time.monotonic(), 0
        done: set[str] = set()

        def once(name: str, when: float, at: float) -> bool:
            if at >= when and name not in done:
                done.add(name)
                return True
            return False

        while (elapsed := time.monotonic() - start) < seconds:
            at = elapsed / seconds
            self.deployment(f"web-{tick}", "web")
            if tick % 3 == 0 and len(self.made) > 1:
                self.scale()
            if once("batch-policy", 0.2, at):
                batch = {
                    "apiVersion": "crd.varmor.org/v1beta1", "kind": "VarmorPolicy",
                    "metadata": {"name": "batch", "namespace": NS},
                    "spec": {"target": {"kind": "Deployment", "selector": {"matchLabels": {"app": "batch"}},
                                        "containers": ["worker"]},
                             "policy": {"enforcer": "AppArmor", "mode": "RuntimeDefault"}},
                }  # fmt: skip
                self.apply(batch)
            if 0.2 <= at < 0.6 and tick % 2 == 0:
                self.deployment(f"batch-{tick}", "batch", container="main")  # matches no container of the policy
            if once("modeling", 0.3, at):
                self.apply(REPO_ROOT / "examples" / "modeling-deployment.yaml")
                self.apply(REPO_ROOT / "examples" / "modeling-policy.yaml")
            if once("modeling-records", 0.4, at):
                text = (REPO_ROOT / "examples" / "modeling-records.log").read_text()
                self.records(text.replace("@PROFILE@", "varmor-demo-api").splitlines())
            if once("update", 0.5, at):
                self.update_demo_policy()
            self.denials(self.rng.randint(15, 25) if 0.62 <= at < 0.78 else int(self.rng.random() < 0.4))
            tick += 1
            time.sleep(max(0.0, start + 2 * tick - time.monotonic()))


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": SCRAPE})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or str(labels)


def seconds_scale(unit: str, values: list[float]) -> tuple[float, str]:
    """Grafana's unit "s" as it shows it: days for certificate lifetimes, ms for latencies."""
    finite = [v for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    if unit != "s":
        return 1.0, ""
    if top > 2 * 86400:
        return 1 / 86400, " d"
    return (1000.0, " ms") if top < 1 else (1.0, " s")


def plot(url: str, start: float, end: float, out: Path, note: str) -> list[str]:
    """The dashboard's panels in its own layout (three a row), each from its own queries.
    Returns the panels that had no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((REPO_ROOT / "chart" / "dashboards" / "varmor.json").read_text())
    variables = {**prom.GRAFANA_VARIABLES, "$__rate_interval": RATE_INTERVAL}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    with urllib.request.urlopen(f"{url}/api/v1/label/__name__/values", timeout=30) as r:
        scraped = set(json.load(r)["data"])
    rows = (len(panels) + 2) // 3
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, 3, figsize=(18, 3.3 * rows), squeeze=False)
    fig.patch.set_facecolor("#111217")
    empty = []
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], loc="left", fontsize=11, color="#ccccdc")
        lines = [
            ([(float(t) - start) / 60 for t, _ in s["values"]], [float(v) for _, v in s["values"]],
             legend(target["legendFormat"], s["metric"]))
            for target in panel["targets"]
            for s in query_range(url, prom.grafana_expr(target["expr"], variables), start, end)
        ]  # fmt: skip
        scale, suffix = seconds_scale(unit, [y for _, ys, _ in lines for y in ys])
        for xs, ys, label in lines:
            ax.plot(xs, [y * scale for y in ys], linewidth=1.6, label=label)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _, s=suffix: f"{v:g}{s}"))
        drawn = len(lines)
        if not drawn:
            empty.append(panel["title"])
            names = set().union(*prom.metric_names([t["expr"] for t in panel["targets"]])) - scraped
            why = f"no data: no series of {', '.join(sorted(names))} in the scrape" if names else "no data"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#8e8e8e", wrap=True)
        else:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.3, ncol=2)
        ax.set_xlim(0, (end - start) / 60)
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.tick_params(labelsize=8, colors="#9fa7b3")
        ax.set_xlabel("minutes", fontsize=8, color="#9fa7b3")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("varmor — chart/dashboards/varmor.json", x=0.01, ha="left", fontsize=15, color="#ccccdc")
    fig.text(0.01, 0.004, textwrap.fill(note, 230), fontsize=8, color="#8e8e8e")
    fig.tight_layout(rect=(0, 0.025, 1, 0.98))
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    return empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long varmor is driven and scraped")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-promtool.sh"), "--server"], check=True)
    work = Path(tempfile.mkdtemp(prefix="varmor-picture-"))
    env = {**os.environ, "VARMOR_STATE": str(work / "state")}
    varmor = [sys.executable, "-m", "varmor.cli"]
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        run([*varmor, "dev", "up"], env)
        dev = work / "state" / "dev"
        metrics_port = json.loads((dev / "state.json").read_text())["ports"]["metrics"]
        prometheus, url = start_prometheus(work, metrics_port)
        start = time.time()
        Activity(work / "state" / "dev-cluster" / "admin.kubeconfig", dev / "audit.log").drive(args.minutes * 60)
        time.sleep(2 * SCRAPE)  # the last records' scrape
        end = time.time()
        version = prom.PROMETHEUS_MODULE_VERSION
        note = (
            f"Each panel's queries, evaluated by Prometheus (module {version}) over {args.minutes:g} minutes of "
            f"{SCRAPE} s scrapes of `varmor dev up` on one host: Deployments created through the webhook, a policy "
            "matching no container, the modelling example, a policy update, AppArmor records appended to the "
            "agent's audit log (a burst of denials mid-run). Grafana itself is not installable here."
        )
        empty = plot(url, start, end, args.out, note)
        print(f"wrote {args.out}; panels without data: {empty or 'none'}")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        subprocess.run([*varmor, "dev", "down"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
