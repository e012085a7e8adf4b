"""Soak benchmark: 30+ minutes of policy churn and pod admissions, and whether memory stays flat.

Everything runs against a real control plane (its own, in a temporary directory):
* varmor as installed from the rendered chart (tests/product.py `installed()`, split topology):
  the manager process (webhook + leader) and a few real agents, each with a stand-in securityfs
  and the real apparmor_parser, started with the chart's own arguments and ServiceAccounts
  (and the chart's leader election timings, not the tests' short ones: `--lease tests`);
* a simulated fleet of nodes (bench_leader's `Agents`: the agent's real StatusWriter, with its
  heartbeat here, so the leader's liveness tracking runs too) that the leader aggregates;
* churn: VarmorPolicies targeting Pods are created, updated (their hardening rules toggle) and
  deleted one at a time on top of a stable set, each waited on until Ready (or gone);
* pods created at a steady rate through the real admission webhook: one for a policy the bench
  saw Ready must come back from the API server with that policy's profile on every container
  (securityContext.appArmorProfile Localhost or the beta annotation); control pods no policy
  selects must come back without one. A pod and the churn of its policy never overlap.

Every `--interval` seconds it records each role process's RSS and open file descriptors
(/proc/PID), the API server's request rate per verb (its /metrics apiserver_request_total, read
with the admin client certificate), and counts errors: ERROR lines and exceptions in every
role's log, the bench's own failed API requests, role processes that exit, and churn that
never settles. Goals, after the `--warmup` minutes: RSS slope <= 1 MB per 10 minutes per role
(least squares over the samples), zero errors, zero admissions without the profile they should
have had. Writes a CSV of the samples and a PNG of RSS per role over time.

Run:   .venv/bin/python bench/bench_soak.py [--minutes 30] [--nodes 50] [--policies 30] [--churn 20]
Smoke: .venv/bin/python bench/bench_soak.py --minutes 1 --csv /tmp/s.csv --png /tmp/s.png
(a run no longer than the warm-up samples every 10 s and fits the slope over its second half)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import logging
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_leader import Agents, setup_nodes  # noqa: E402
from tests import product  # noqa: E402
from tests.helpers import pod_spec, policy  # noqa: E402
from tests.product import Install, installed  # noqa: E402
from varmor import api  # noqa: E402
from varmor.admission.objects import view_of  # noqa: E402
from varmor.admission.planner import effective_localhost, pod_parts  # noqa: E402
from varmor.dev import chart  # noqa: E402
from varmor.dev.cluster import ControlPlane, ControlPlaneState  # noqa: E402
from varmor.dev.install import install_crds  # noqa: E402
from varmor.kube import paths  # noqa: E402
from varmor.kube.client import ApiException, new_api_client  # noqa: E402
from varmor.kube.informer import Informer  # noqa: E402
from varmor.kube.kube import MERGE_PATCH, Kube  # noqa: E402
from varmor.nodeexec.status import StatusWriter  # noqa: E402

INSTALL_NS = "varmor-soak"
RULESETS = (["disallow-write-core-pattern"], ["disallow-write-core-pattern", "disallow-mount"])
VERBS = ("GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "DELETE")
ABSENT, CREATING, READY, UPDATING, DELETING = "absent", "creating", "ready", "updating", "deleting"
SLOPE_GOAL = 1.0  # MB per 10 minutes
TOKEN_LIFETIME_MIN = 55  # tests/product.py's ServiceAccount tokens last an hour
REQUEST_ERRORS = (ApiException, OSError, asyncio.TimeoutError)


@dataclass
class Slot:
    """One policy the bench drives; `state` is what the bench asked for and has seen."""

    namespace: str
    name: str
    churn: bool
    state: str = ABSENT
    since: float = 0.0  # monotonic time of the last request that changed `state`
    generation: int = 0  # the generation that must be Ready
    rules: int = 0  # index into RULESETS
    profile: str = ""
    stalled: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Fleet(Agents):
    """bench_leader's simulated agents, with the real agent's heartbeat: over half an hour the
    leader's liveness tracking (AgentLost after missed beats) is part of what runs."""

    def __init__(self, api_client: Any, names: list[str], pace: float, heartbeat: float) -> None:
        super().__init__(api_client, names, pace)
        self.writers = [StatusWriter(self.kube, n, self.status, heartbeat=heartbeat, pace=pace) for n in names]


class Driver:
    """Churns the policies, admits the pods and counts what went wrong."""

    def __init__(self, api_client: Any, args: argparse.Namespace, namespaces: list[str]) -> None:
        self.kube = Kube(api_client, component="bench")
        self.args = args
        self.namespaces = namespaces
        self.rng = random.Random(args.seed)
        self.slots = [Slot(namespaces[i % len(namespaces)], f"s{i:03d}", False) for i in range(args.policies)]
        self.slots += [Slot(namespaces[i % len(namespaces)], f"c{i:03d}", True) for i in range(args.churn)]
        self.by_key = {(s.namespace, s.name): s for s in self.slots}
        self.policies = Informer(api_client, api.VARMOR_POLICY, resync_seconds=3600)
        self.policies.add_handler(self._on_policy)
        self.counts: Counter[str] = Counter()  # pods, ops, errors by kind
        self.latency: dict[str, list[float]] = {"create": [], "update": [], "delete": []}
        self.examples: list[str] = []

    def error(self, kind: str, detail: object) -> None:
        self.counts[f"error:{kind}"] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {str(detail)[:300]}")

    async def exists(self, path: str) -> bool:
        try:
            await self.kube.request("GET", path)
        except ApiException:
            return False
        return True

    # -- policy state, from the bench's own watch ----------------------------------------
    async def _on_policy(self, event: str, obj: Any) -> None:
        slot = self.by_key.get((obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        if slot is not None:
            self._settle(slot, None if event == "DELETED" else obj)

    def _settle(self, slot: Slot, obj: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if obj is None:
            if slot.state == DELETING:
                self.latency["delete"].append(now - slot.since)
                slot.state, slot.stalled = ABSENT, False
            elif slot.state != ABSENT:
                self.error("policy_vanished", f"{slot.namespace}/{slot.name} gone while {slot.state}")
                slot.state = ABSENT
            return
        status, meta = obj.get("status") or {}, obj["metadata"]
        if slot.state not in (CREATING, UPDATING) or not slot.generation or meta.get("deletionTimestamp"):
            return
        if status.get("ready") and status.get("observedGeneration") == meta["generation"] >= slot.generation:
            self.latency["create" if slot.state == CREATING else "update"].append(now - slot.since)
            slot.profile, slot.state, slot.stalled = status["profileName"], READY, False

    def _recover(self, slot: Slot) -> None:
        """After a failed request: take the state from the watch (the request may have landed)."""
        obj = self.policies.get(slot.namespace, slot.name)
        if obj is None:
            slot.state = ABSENT
        elif obj["metadata"].get("deletionTimestamp"):
            slot.state = DELETING
        else:
            slot.state, slot.generation = UPDATING, obj["metadata"]["generation"]
            self._settle(slot, obj)

    async def _policy_request(self, slot: Slot, op: str, state: str, method: str, body: Any = None) -> None:
        path = paths.custom_path(api.VARMOR_POLICY, slot.namespace, None if method == "POST" else slot.name)
        slot.state, slot.since, slot.generation = state, time.monotonic(), 0
        try:
            content = MERGE_PATCH if method == "PATCH" else "application/json"
            got = await self.kube.request(method, path, body=body, content_type=content)
        except REQUEST_ERRORS as exc:
            self.error(f"driver_{op}", exc)
            self._recover(slot)
            return
        self.counts[f"op:{op}"] += 1
        if state != DELETING:
            slot.generation = got["metadata"]["generation"]
            if (seen := self.policies.get(slot.namespace, slot.name)) is not None:  # Ready before the answer?
                self._settle(slot, seen)

    async def create(self, slot: Slot) -> None:
        body = policy(slot.name, slot.namespace, "Pod", enhance={"hardeningRules": RULESETS[slot.rules]})
        await self._policy_request(slot, "create", CREATING, "POST", body)

    async def churn_once(self) -> None:
        settled = [s for s in self.slots if s.churn and s.state in (ABSENT, READY)]
        if not settled:
            return
        slot = self.rng.choice(settled)
        async with slot.lock:
            if slot.state == ABSENT:
                await self.create(slot)
            elif self.rng.random() < self.args.update_share:
                slot.rules ^= 1
                body = {"spec": {"policy": {"enhanceProtect": {"hardeningRules": RULESETS[slot.rules]}}}}
                await self._policy_request(slot, "update", UPDATING, "PATCH", body)
            else:
                await self._policy_request(slot, "delete", DELETING, "DELETE")

    # -- pods through the webhook -------------------------------------------------------
    async def pod_once(self) -> None:
        ready = [s for s in self.slots if s.state == READY]
        if not ready or self.rng.random() < self.args.control_share:
            await self._admit(self.rng.choice(self.namespaces), "unselected", None)
            return
        slot = self.rng.choice(ready)
        async with slot.lock:  # no churn of this policy while its pod is admitted
            if slot.state != READY:
                return
            await self._admit(slot.namespace, slot.name, slot.profile)

    async def _admit(self, namespace: str, app: str, profile: str | None, *, record: bool = True) -> bool:
        """Create one pod, check what admission made of it, delete it. True if as expected;
        `record=False` (the warm-up's probe) counts nothing."""
        body = {"metadata": {"generateName": f"{app}-", "labels": {"app": app}}, "spec": pod_spec(("app", "side"))}
        path = paths.core_path("pods", namespace)
        try:
            got = await self.kube.request("POST", path, body=body)
        except REQUEST_ERRORS as exc:
            if record:
                self.error("driver_pod_create", exc)
            return False
        meta, spec = pod_parts("Pod", view_of(got))
        assert spec is not None
        attached = {effective_localhost(meta, spec, c) for c in spec.containers or []}
        ok = attached == {profile}
        kind = "expected" if profile else "control"
        self.counts[f"pods:{kind}"] += record
        if not ok and record:
            self.counts[f"pods:{kind}_wrong"] += 1
            what = "without its profile" if profile else "with a profile no policy asked for"
            self.error(f"pod_{kind}", f"{namespace}/{got['metadata']['name']} {what}: {attached} (want {profile})")
        try:
            await self.kube.request("DELETE", paths.core_path("pods", namespace, got["metadata"]["name"]))
        except REQUEST_ERRORS as exc:
            self.error("driver_pod_delete", exc)
        return ok

    # -- loops --------------------------------------------------------------------------
    async def every(self, interval: float, step: Any, stop: asyncio.Event) -> None:
        """Run `step` every `interval` seconds (catching up after a slow one) until `stop`."""
        due = time.monotonic()
        while not stop.is_set():
            await step()
            due = max(due + interval, time.monotonic() - interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))

    def check_stalls(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            late = now - slot.since > self.args.stall_after
            if slot.state in (CREATING, UPDATING, DELETING) and not slot.stalled and late:
                slot.stalled = True
                self.error("churn_stalled", f"{slot.namespace}/{slot.name} {slot.state} > {self.args.stall_after}s")


# -- measurements ---------------------------------------------------------------------------


def rss_fds(pid: int) -> tuple[float, int, float]:
    """(RSS MB, open fds, peak RSS MB) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), hwm / 1024


def scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=20, context=context) as response:
        return str(response.read().decode())


def counter_sum(text: str, metric: str, label: str, where: str = "") -> Counter[str]:
    """A counter's value summed by one of its labels (over the series whose labels contain `where`)."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith(metric + "{") and where in line:
            m = re.search(rf'{label}="([^"]*)"', line)
            out[m.group(1) if m else ""] += float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
    return out


class LogScan:
    """Reads each role's JSON log as it grows: lines at error or above, or with an exception
    (the errors), and warnings (reported, no goal)."""

    def __init__(self) -> None:
        self.offsets: dict[Path, int] = {}
        self.counts: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: list[str] = []
        self.warning_examples: Counter[str] = Counter()  # "role: message" -> times

    def scan(self, role: str, path: Path) -> None:
        with path.open("rb") as f:
            f.seek(self.offsets.get(path, 0))
            data = f.read()
        end = data.rfind(b"\n") + 1  # a partial last line waits for the next scan
        self.offsets[path] = self.offsets.get(path, 0) + end
        for line in data[:end].splitlines():
            try:
                entry = orjson.loads(line)
                bad = entry.get("level") in ("error", "critical") or "exc" in entry
            except orjson.JSONDecodeError:
                entry, bad = {}, b"Traceback" in line or b"Error" in line
            if not bad and entry.get("level") == "warning":
                self.warnings[role] += 1
                self.warning_examples[f"{role}: {entry.get('msg', '')}"[:200]] += 1
            if bad:
                self.counts[role] += 1
                if len(self.examples) < 20:
                    self.examples.append(f"{role}: {line[:400].decode(errors='replace')}")


class BenchLog(logging.Handler):
    """Counts the bench process's own warnings (the fleet's StatusWriters, the informers)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.examples) < 20:
            self.examples.append(f"bench {record.levelname} {record.name}: {record.getMessage()[:300]}")


@dataclass
class Sampler:
    """Every interval: RSS and fds of each role, the API server's request rate per verb."""

    roles: dict[str, int]  # role -> pid; the goals apply to these
    context: dict[str, int]  # control plane and the bench itself: recorded, no goal
    apiserver: str
    tls: ssl.SSLContext
    rows: list[dict[str, float]] = field(default_factory=list)
    hwm: dict[str, float] = field(default_factory=dict)
    last: tuple[float, Counter[str]] | None = None

    async def sample(self, minute: float, extra: dict[str, float]) -> dict[str, float]:
        row: dict[str, float] = {"minute": round(minute, 2)}
        for name, pid in {**self.roles, **self.context}.items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                rss, fds, hwm = rss_fds(pid)
                row[f"rss_mb:{name}"], row[f"fds:{name}"], self.hwm[name] = round(rss, 2), fds, hwm
        text = await asyncio.to_thread(scrape, f"{self.apiserver}/metrics", self.tls)
        now, totals = time.monotonic(), counter_sum(text, "apiserver_request_total", "verb")
        if self.last is not None:
            dt = now - self.last[0]
            for verb in VERBS:
                row[f"req_per_s:{verb}"] = round((totals[verb] - self.last[1][verb]) / dt, 2)
        codes = counter_sum(text, "apiserver_request_total", "code")
        row["apiserver_5xx_total"] = sum(v for c, v in codes.items() if c.startswith("5"))
        self.last = (now, totals)
        row |= extra
        self.rows.append(row)
        return row


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope in MB per 10 minutes of (minute, MB) points."""
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    return 10 * statistics.linear_regression(xs, ys).slope


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else float("nan")


# -- the run --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the report needs once the run is over."""

    minutes: float
    sampler: Sampler
    driver: Driver
    logs: LogScan
    bench_log: BenchLog
    unconfined: Counter[str]
    admissions: Counter[str]
    fleet_write_errors: float
    exited: list[str]
    transitions: Counter[str]  # the manager's leadership changes, by event


def chart_lease() -> contextlib.AbstractContextManager[Any]:
    """installed() renders the chart with the tests' short leader election (quick failovers);
    a soak runs the chart's own timings, so that override is dropped while it renders."""

    def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        return chart.render({k: v for k, v in (values or {}).items() if k != "leaderElection"}, **kwargs)

    return mock.patch.object(product, "render", render)


async def soak(args: argparse.Namespace, plane: ControlPlane, state: ControlPlaneState) -> Outcome:
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    api_client = await new_api_client(state.kubeconfig)
    kube = Kube(api_client)
    try:
        await install_crds(api_client)
        namespaces = [f"soak-{i}" for i in range(args.namespaces)]
        for ns in (INSTALL_NS, *namespaces):
            with contextlib.suppress(ApiException):
                await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        names = await setup_nodes(kube, args.nodes)
        tmp = Path(state.workdir) / "install"
        tmp.mkdir()
        agents = tuple(f"soak-agent-{i}" for i in range(args.agents))
        print(f"control plane up, {args.nodes} simulated nodes; installing varmor", flush=True)
        lease = chart_lease() if args.lease == "chart" else contextlib.nullcontext()
        async with contextlib.AsyncExitStack() as stack:
            with lease:  # installed() renders the chart as it enters
                inst = await stack.enter_async_context(
                    installed(api_client, state.kubeconfig, INSTALL_NS, tmp, topology="split", nodes=agents)
                )
            try:
                return await run(args, api_client, plane, state, inst, names, namespaces)
            finally:
                Path(args.log_dir).mkdir(parents=True, exist_ok=True)
                for p in inst.processes:
                    shutil.copy(p.log, Path(args.log_dir) / f"{p.name}.log")
    finally:
        await api_client.close()


async def run(
    args: argparse.Namespace,
    api_client: Any,
    plane: ControlPlane,
    state: ControlPlaneState,
    inst: Install,
    names: list[str],
    namespaces: list[str],
) -> Outcome:
    from prometheus_client import REGISTRY

    from tests.helpers import wait_for

    driver = Driver(api_client, args, namespaces)
    fleet = Fleet(api_client, names, args.pace, args.heartbeat)
    manager = next(p for p in inst.processes if p.name == "manager")
    tls = ssl.create_default_context(cafile=str(state.ca_cert))
    pki = Path(state.workdir) / "pki"
    tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    sampler = Sampler(
        {"manager": manager.proc.pid, **{p.name: p.proc.pid for p in inst.processes if p is not manager}},
        {"kube-apiserver": plane.procs["kube-apiserver"].pid, "etcd": plane.procs["etcd"].pid, "bench": os.getpid()},
        state.server,
        tls,
    )
    logs, bench_log, stop = LogScan(), BenchLog(), asyncio.Event()
    logging.getLogger().addHandler(bench_log)
    background = [asyncio.create_task(fleet.run()), asyncio.create_task(driver.policies.run())]
    loops: list[asyncio.Task[None]] = []
    exited: list[str] = []
    try:
        # Warm-up (not counted): the stable policies Ready, the API server calling the webhook.
        await wait_for(lambda: driver.policies.synced and fleet.profiles.synced, timeout=60)
        print("varmor ready; creating the stable policies", flush=True)
        for slot in driver.slots:
            if not slot.churn:
                await driver.create(slot)
        await wait_for(
            lambda: all(s.state == READY for s in driver.slots if not s.churn),
            timeout=900,
            what="stable policies Ready",
        )
        stable = driver.slots[0]
        for ns in namespaces:  # a pod needs its namespace's default ServiceAccount
            sa = paths.core_path("serviceaccounts", ns, "default")
            await wait_for(functools.partial(driver.exists, sa), timeout=60, what=f"{ns}'s default ServiceAccount")
        await wait_for(lambda: driver._admit(stable.namespace, stable.name, stable.profile, record=False), timeout=120)
        driver.counts.clear()
        driver.examples.clear()
        for values in driver.latency.values():
            values.clear()
        print(f"warm-up done: {args.policies} policies Ready on {len(names) + args.agents} nodes", flush=True)

        t0 = time.monotonic()
        loops = [
            asyncio.create_task(driver.every(1 / args.pod_rate, driver.pod_once, stop)),
            asyncio.create_task(driver.every(args.churn_interval, driver.churn_once, stop)),
        ]
        due = t0
        while True:
            minute = (time.monotonic() - t0) / 60
            for p in inst.processes:
                logs.scan(p.name, p.log)
                if p.proc.poll() is not None and p.name not in exited:
                    exited.append(p.name)
            driver.check_stalls()
            errors = sum(v for k, v in driver.counts.items() if k.startswith("error:"))
            extra: dict[str, float] = {
                "pods": driver.counts["pods:expected"] + driver.counts["pods:control"],
                "pods_without_profile": driver.counts["pods:expected_wrong"],
                "churn_ops": sum(v for k, v in driver.counts.items() if k.startswith("op:")),
                "errors": errors + sum(logs.counts.values()) + bench_log.count,
            }
            row = await sampler.sample(minute, extra)
            rss = " ".join(f"{r}={row.get(f'rss_mb:{r}', 0):.1f}" for r in sampler.roles)
            print(f"[{minute:5.1f} min] RSS MB {rss} | " + " ".join(f"{k}={v:g}" for k, v in extra.items()), flush=True)
            if minute >= args.minutes - 1e-6 or exited:
                break
            due += args.interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        duration = (time.monotonic() - t0) / 60
        stop.set()
        await asyncio.gather(*loops)
        # Churn that is under way finishes before the last count: a slot that never does stalls.
        with contextlib.suppress(AssertionError):
            await wait_for(
                lambda: all(s.state in (ABSENT, READY) for s in driver.slots), timeout=args.stall_after, interval=1
            )
        driver.check_stalls()
        for p in inst.processes:
            logs.scan(p.name, p.log)
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{manager.metrics_port}/metrics")
        fleet_errors = REGISTRY.get_sample_value("varmor_agent_status_writes_total", {"result": "error"}) or 0.0
        return Outcome(
            duration,
            sampler,
            driver,
            logs,
            bench_log,
            counter_sum(text, "varmor_admission_unconfined_total", "reason"),
            counter_sum(text, "varmor_admission_requests_total", "result", 'kind="Pod"'),
            fleet_errors,
            exited,
            counter_sum(text, "varmor_leader_transitions_total", "event"),
        )
    finally:
        stop.set()
        logging.getLogger().removeHandler(bench_log)
        for task in loops + background:
            task.cancel()
        for task in loops + background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# -- the report -----------------------------------------------------------------------------


def series(rows: list[dict[str, float]], key: str, after: float = 0.0) -> list[tuple[float, float]]:
    return [(r["minute"], r[key]) for r in rows if key in r and r["minute"] >= after - 1e-6]


def report(args: argparse.Namespace, out: Outcome) -> bool:
    """Prints the figures as Markdown tables and each goal met / not met; True if all are met."""
    rows, driver, counts = out.sampler.rows, out.driver, out.driver.counts
    print(f"\n## Soak: {out.minutes:.1f} min, samples every {args.interval:g} s, slope fit from minute {args.warmup:g}")
    print("command: .venv/bin/python bench/bench_soak.py " + " ".join(sys.argv[1:]))
    print(f"machine: {os.cpu_count()}-core VM, load average at the end {os.getloadavg()[0]:.1f}\n")
    print(
        "| process | RSS at fit start MB | RSS at end MB | peak MB | slope MB/10 min | slope, 2nd half "
        "| fds start/end/max | log errors | log warnings |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    slopes: dict[str, float | None] = {}
    for name in [*out.sampler.roles, *out.sampler.context]:
        rss, fds = series(rows, f"rss_mb:{name}", args.warmup), series(rows, f"fds:{name}")
        slopes[name] = slope(rss)
        s = slopes[name]
        role = name in out.sampler.roles
        late = slope(series(rows, f"rss_mb:{name}", (args.warmup + out.minutes) / 2))
        fit = " | ".join(f"{x:+.2f}" if x is not None else "n/a" for x in (s, late))
        fd = f"{fds[0][1]:.0f} / {fds[-1][1]:.0f} / {max(v for _, v in fds):.0f}" if fds else "n/a"
        first, last = (f"{rss[0][1]:.1f}", f"{rss[-1][1]:.1f}") if rss else ("n/a", "n/a")
        label = name if role else f"{name} (no goal)"
        errs = f"{out.logs.counts[name]} | {out.logs.warnings[name]}" if role else "- | -"
        print(f"| {label} | {first} | {last} | {out.sampler.hwm.get(name, 0):.1f} | {fit} | {fd} | {errs} |")
    rates = {v: statistics.mean(x for _, x in series(rows, f"req_per_s:{v}")) for v in VERBS if len(rows) > 1}
    print(
        "\nAPI server requests per second (mean of the per-interval rates): "
        + ", ".join(f"{v} {r:.1f}" for v, r in rates.items())
    )
    if len(rows) > 1:
        print(f"API server 5xx answers: {rows[-1]['apiserver_5xx_total'] - rows[0]['apiserver_5xx_total']:.0f}")
    pods = counts["pods:expected"] + counts["pods:control"]
    print(
        f"pods admitted: {pods} ({pods / max(out.minutes * 60, 1):.2f}/s): {counts['pods:expected']} selected by "
        f"a Ready policy, {counts['pods:expected_wrong']} of them without its profile; "
        f"{counts['pods:control']} control pods, {counts['pods:control_wrong']} of them with a profile"
    )
    for op in ("create", "update", "delete"):
        lat = driver.latency[op]
        print(
            f"policy {op}s: {counts[f'op:{op}']}, to {'gone' if op == 'delete' else 'Ready'} p50 "
            f"{pct(lat, 50):.2f} s, p95 {pct(lat, 95):.2f} s, max {max(lat, default=float('nan')):.2f} s"
        )
    print(f"varmor_leader_transitions_total (manager) by event: {dict(out.transitions)}")
    print(f"varmor_admission_unconfined_total by reason: {dict(out.unconfined) or 'none'}")
    print(f"varmor_admission_requests_total (Pods, warm-up included) by result: {dict(out.admissions)}")
    errors = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("error:")}
    errors |= {f"log:{k}": v for k, v in out.logs.counts.items() if v}
    if out.bench_log.count:
        errors["bench log warnings (fleet, informers)"] = out.bench_log.count
    if out.fleet_write_errors:
        errors["fleet status write errors"] = int(out.fleet_write_errors)
    errors |= {f"exited:{name}": 1 for name in out.exited}
    print(f"errors: {sum(errors.values())} {errors or ''}")
    for line in driver.examples + out.logs.examples + out.bench_log.examples:
        print("  " + line)
    print(f"role log warnings (no goal): {sum(out.logs.warnings.values())}")
    for line, times in out.logs.warning_examples.most_common(10):
        print(f"  {times} x {line}")
    flat = [n for n in out.sampler.roles if (s := slopes[n]) is not None and s <= SLOPE_GOAL]
    measured = all(slopes[n] is not None for n in out.sampler.roles)
    goals = {
        f"RSS slope <= {SLOPE_GOAL:g} MB / 10 min for every role after minute {args.warmup:g}": measured
        and len(flat) == len(out.sampler.roles),
        "zero errors": not errors,
        "zero admissions without the profile they should have had": counts["pods:expected_wrong"] == 0
        and counts["pods:expected"] > 0,
    }
    print()
    for goal, met in goals.items():
        note = "" if met or measured or not goal.startswith("RSS") else " (too few samples after the warm-up)"
        print(f"- {goal}: {'met' if met else 'NOT met'}{note}")
    return all(goals.values())


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def plot(out: Outcome, warmup: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out.sampler.rows
    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True, height_ratios=(2, 2, 1.2, 1.5))
    ax_manager, ax_agents, ax_fds, ax_api = axes
    for i, name in enumerate(out.sampler.roles):
        points = series(rows, f"rss_mb:{name}")
        s = slope(series(rows, f"rss_mb:{name}", warmup))
        label = f"{name} ({s:+.2f} MB / 10 min)" if s is not None else name
        ax = ax_manager if name == "manager" else ax_agents
        ax.plot(*zip(*points, strict=True), marker=".", label=label, color=f"C{i}")
        ax_fds.plot(*zip(*series(rows, f"fds:{name}"), strict=True), marker=".", label=name, color=f"C{i}")
    for ax in axes:
        ax.axvline(warmup, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    for ax, what in ((ax_manager, "manager (webhook + leader)"), (ax_agents, "agents")):
        ax.set_ylabel(f"RSS MB, {what}")
        ax.legend(fontsize=8, title="slope after the warm-up (dotted line)", title_fontsize=8)
    ax_fds.set_ylabel("open fds")
    for verb in VERBS:
        points = series(rows, f"req_per_s:{verb}")
        if points and max(v for _, v in points) > 0:
            ax_api.plot(*zip(*points, strict=True), label=verb)
    ax_api.set_ylabel("API server req/s")
    ax_api.set_xlabel("minutes of churn")
    ax_api.legend(fontsize=8, ncol=4)
    ax_manager.set_title(f"varmor soak: RSS per role over {out.minutes:.0f} min of policy churn and pod admissions")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--minutes", type=float, default=30.0, help="how long the churn runs after the warm-up")
    add("--interval", type=float, default=60.0, help="seconds between samples")
    add("--warmup", type=float, default=5.0, help="minutes left out of the RSS slope fit")
    add("--nodes", type=int, default=50, help="simulated nodes (the agent's StatusWriter each)")
    add("--agents", type=int, default=3, help="real agent processes (stand-in securityfs, real apparmor_parser)")
    add("--policies", type=int, default=30, help="stable policies (created once, never churned)")
    add("--churn", type=int, default=20, help="policies created, updated and deleted over and over")
    add("--namespaces", type=int, default=3)
    add("--pod-rate", type=float, default=2.0, help="pods admitted per second")
    add("--churn-interval", type=float, default=2.0, help="seconds between churn operations")
    add("--update-share", type=float, default=0.6, help="of the churn on a Ready policy, the share that updates it")
    add("--control-share", type=float, default=0.1, help="share of pods no policy selects")
    add("--pace", type=float, default=2.0, help="the simulated agents' StatusWriter pace")
    add("--heartbeat", type=float, default=api.DEFAULT_HEARTBEAT, help="the simulated agents' heartbeat (s)")
    add("--stall-after", type=float, default=300.0, help="a policy not Ready (or gone) after this is an error")
    add("--seed", type=int, default=1)
    add(
        "--lease",
        choices=("chart", "tests"),
        default="chart",
        help="leader election timings: the chart's defaults, "
        "or the short ones tests/product.py renders for quick failovers",
    )
    add("--csv", default=str(REPO / "bench" / "soak-samples.csv"))
    add("--png", default=str(REPO / "bench" / "soak-rss.png"))
    add("--log-dir", default=str(Path(tempfile.gettempdir()) / "varmor-soak-logs"), help="role logs are copied here")
    args = parser.parse_args()
    if args.minutes <= args.warmup:  # a smoke run: enough samples to exercise the fit
        args.warmup, args.interval = args.minutes / 2, min(args.interval, 10.0)
    if args.minutes > TOKEN_LIFETIME_MIN - 10:
        parser.error(f"--minutes at most {TOKEN_LIFETIME_MIN - 10}: the chart accounts' tokens last an hour")
    logging.basicConfig(level=logging.WARNING, format="bench %(levelname)s %(name)s: %(message)s")
    # Ctrl-C even in a shell's background job (which ignores SIGINT): asyncio then cancels
    # the run, which stops every process it started (SIGTERM does the same: see soak()).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="varmor-soak-"))
    plane = ControlPlane(workdir)
    try:
        state = plane.start()
        out = asyncio.run(soak(args, plane, state))
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_csv(out.sampler.rows, Path(args.csv))
    ok = report(args, out)
    plot(out, args.warmup, Path(args.png))
    print(f"\nsamples: {args.csv}; plot: {args.png}; role logs: {args.log_dir}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
