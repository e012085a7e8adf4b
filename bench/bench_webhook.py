"""Webhook benchmark: AdmissionReview throughput/latency over TLS keep-alive, and
end-to-end pod-create latency through the real API server with and without varmor.

    .venv/bin/python bench/bench_webhook.py            # parts server and e2e
    .venv/bin/python bench/bench_webhook.py --part server|e2e|scale

Part 1 runs each server in its own process (one core) and the Go load generator
(bench/loadgen, GOMAXPROCS=1) in another: a bare aiohttp TLS handler that reads the
body and returns a fixed allow (the Python ceiling on this machine), and varmor's
/mutate with 100 policies loaded, answering a realistic Pod review with a patch; each
on asyncio's own event loop and on uvloop (what `varmor run` uses).
Part 2 starts the local control plane, runs varmor's webhook + leader tasks in a child
process, and rotates pod creations over namespaces: one no webhook is registered for,
one varmor's policy selects, and three echo webhooks (Python, Go, Go answering a fixed
patch) that bound what any webhook call costs this API server.
Part `scale` runs /mutate as part 1 does with 10, 1,000 and 10,000
policies, spread over namespaces and all in the request's namespace, with the label index
and with the linear scan it replaced, and prints the webhook configurations' sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from varmor import api  # noqa: E402
from varmor.admission.objects import ObjectView, view_of  # noqa: E402
from varmor.admission.planner import plan_patch  # noqa: E402
from varmor.admission.registration import Registration, mutating_configuration, validating_configuration  # noqa: E402
from varmor.admission.selection import PolicyIndex, Selection, _select  # noqa: E402
from varmor.app import EVENT_LOOPS as LOOPS  # noqa: E402
from varmor.app import run_on_loop  # noqa: E402
from varmor.certs import pki  # noqa: E402
from varmor.dev.cluster import free_port  # noqa: E402

LOADGEN_DIR = ROOT / "bench" / "loadgen"
ECHO_DIR = ROOT / "bench" / "echowebhook"
PRODUCT_LOOP = "uvloop"  # what `varmor run` uses by default


# -- servers (child processes) ---------------------------------------------------------


def _policies(n: int = 100) -> list[dict[str, Any]]:
    """n-1 namespaced policies elsewhere plus the one that selects the benchmark pod."""
    out = []
    for i in range(n - 1):
        out.append(
            {
                "apiVersion": api.API_VERSION,
                "kind": "VarmorPolicy",
                "metadata": {"name": f"p{i}", "namespace": f"team-{i % 20}", "uid": f"u{i}"},
                "spec": {"target": {"kind": "Pod", "selector": {"matchLabels": {"app": f"svc-{i}"}}}},
                "status": {"profileName": f"varmor-team-{i % 20}-p{i}"},
            }
        )
    out.append(
        {
            "apiVersion": api.API_VERSION,
            "kind": "VarmorPolicy",
            "metadata": {"name": "web", "namespace": "bench", "uid": "u-web"},
            "spec": {"target": {"kind": "Pod", "selector": {"matchLabels": {"app": "web"}}}},
            "status": {"profileName": "varmor-bench-web"},
        }
    )
    return out


def review_body() -> bytes:
    """A Pod CREATE review shaped like what the API server sends (~3 KB)."""
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "generateName": "web-7d4b9c8f6-",
            "namespace": "bench",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d4b9c8f6",
                    "uid": "1b2c3d4e-0000-4000-8000-000000000000",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "volumes": [
                {"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
            ],
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}],
            "containers": [
                {
                    "name": name,
                    "image": f"registry.example.com/{name}:1.2.3",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": f"VAR_{j}", "value": "x" * 20} for j in range(8)],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets", "readOnly": True}],
                    "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
                }
                for name in ("app", "sidecar")
            ],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
    }
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "bench",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": []},
                "object": pod,
                "oldObject": None,
                "dryRun": False,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
            },
        }
    )


async def _serve(kind: str, port: int, cert: str, key: str) -> None:
    import ssl

    from aiohttp import web

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if kind == "bare":
        fixed = orjson.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "", "allowed": True}}
        )

        async def allow(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=fixed, content_type="application/json")

        app = web.Application(client_max_size=6 * 1024 * 1024)
        app.router.add_post("/mutate", allow)
    elif kind == "echo":  # the least a valid webhook does: echo the uid, allow

        async def echo(request: web.Request) -> web.Response:
            uid = orjson.loads(await request.read())["request"]["uid"]
            body = {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": True},
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")

        app = web.Application(client_max_size=6 * 1024 * 1024)
        app.router.add_post("/mutate", echo)
    else:
        from varmor.webhook.mutate import MutationState
        from varmor.webhook.server import build_app
        from varmor.webhook.validate import PolicyValidator

        if kind.startswith("scale:"):  # scale:<distribution>:<policies>:<index|linear>
            _, dist, n, impl = kind.split(":")
            index = (PolicyIndex if impl == "index" else LinearIndex)(scale_policies(dist, int(n)))
        else:
            index = PolicyIndex(_policies())
        state = MutationState(index=index, synced=True, use_field=True)
        app = build_app(state, PolicyValidator("varmor"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    gc.collect()
    gc.freeze()  # as varmor's webhook role does (both servers, for a fair ceiling)
    print("ready", flush=True)
    await asyncio.Event().wait()


def build_go(source: Path, out: Path, name: str) -> Path:
    binary = out / name
    env = {**os.environ, "GOFLAGS": "", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=source, env=env, check=True)
    return binary


def build_loadgen(out: Path) -> Path:
    return build_go(LOADGEN_DIR, out, "loadgen")


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(kind: str, port: int, cert: Path, key: Path, loop: str = PRODUCT_LOOP) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", kind, str(port), str(cert), str(key), loop],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{kind} server did not start")
    return proc


def loadgen(
    binary: Path, port: int, ca: Path, body: Path, *, conns: int, seconds: float, rate: float = 0
) -> dict[str, Any]:
    cmd = [
        str(binary),
        f"-url=https://127.0.0.1:{port}/mutate",
        f"-ca={ca}",
        f"-body={body}",
        f"-conns={conns}",
        f"-duration={seconds}s",
        f"-rate={rate}",
        "-warmup=1s",
    ]
    env = {**os.environ, "GOMAXPROCS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _workspace(tmp: Path) -> Path:
    """A CA, the server's certificate, the review body and the load generator, in `tmp`."""
    ca = pki.new_ca("bench-ca", dt.timedelta(hours=1))
    leaf = pki.issue(ca, "bench", dt.timedelta(hours=1), ip_addresses=("127.0.0.1",))
    (tmp / "ca.crt").write_bytes(ca.cert_pem)
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    (tmp / "review.json").write_bytes(review_body())
    return build_loadgen(tmp)


def _measure(
    tmp: Path, binary: Path, kind: str, loop: str, *, conns: int, seconds: float, rate: float
) -> dict[str, Any]:
    """One load-generator run against a fresh server process, with its CPU time per request."""
    port = free_port()
    proc = start_server(kind, port, tmp / "tls.crt", tmp / "tls.key", loop)
    try:
        cpu0 = cpu_seconds(proc.pid)
        result = loadgen(binary, port, tmp / "ca.crt", tmp / "review.json", conns=conns, seconds=seconds, rate=rate)
        served = result["requests"] + result["warmup_requests"]
        result["cpu_us_per_request"] = (cpu_seconds(proc.pid) - cpu0) / max(served, 1) * 1e6
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def part_server(seconds: float, conns: int, rounds: int) -> dict[str, Any]:
    """Both servers on both event loops, interleaved `rounds` times (the machine is shared:
    interleaving makes all see the same background load); medians are reported.

    The ceiling is measured on each loop, and the ratios are same-loop; `varmor run` uses
    uvloop, so its figure is also set against the faster of the two bare ceilings."""
    servers = [(kind, loop) for loop in LOOPS for kind in ("bare", "varmor")]
    runs: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {k: {"max": [], "half": []} for k in servers}
    with tempfile.TemporaryDirectory(prefix="varmor-bench-") as tmp_s:
        tmp = Path(tmp_s)
        binary = _workspace(tmp)

        def measure(server: tuple[str, str], rate: float) -> dict[str, Any]:
            return _measure(tmp, binary, server[0], server[1], conns=conns, seconds=seconds, rate=rate)

        for _ in range(rounds):
            for server in servers:
                runs[server]["max"].append(measure(server, 0))
        # Latency at half of varmor's maximum (as `varmor run` serves), both servers at that rate.
        half = statistics.median(r["rps"] for r in runs[("varmor", PRODUCT_LOOP)]["max"]) / 2
        for _ in range(rounds):
            for kind in ("bare", "varmor"):
                runs[(kind, PRODUCT_LOOP)]["half"].append(measure((kind, PRODUCT_LOOP), half))

    def med(items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            return {}
        keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_us_per_request")
        out: dict[str, Any] = {k: statistics.median(i[k] for i in items) for k in keys}
        out["errors"] = sum(i["errors"] for i in items)
        out["requests"] = sum(i["requests"] for i in items)
        out["runs"] = [round(i["rps"]) for i in items]
        return out

    results: dict[str, Any] = {"half_rate": half, "review_bytes": len(review_body())}
    for loop in LOOPS:
        bare, varmor = ({p: med(runs[(k, loop)][p]) for p in ("max", "half")} for k in ("bare", "varmor"))
        results[loop] = {
            "bare": bare,
            "varmor": varmor,
            "ratio": varmor["max"]["rps"] / bare["max"]["rps"],
            # Capacity from CPU time per request: robust to other load on a shared machine.
            "cpu_ratio": bare["max"]["cpu_us_per_request"] / varmor["max"]["cpu_us_per_request"],
        }
    best_bare = max(results[loop]["bare"]["max"]["rps"] for loop in LOOPS)
    results["product_vs_best_bare"] = results[PRODUCT_LOOP]["varmor"]["max"]["rps"] / best_bare
    return results


# -- admission at scale ----------------------------------------------------------------

SCALE_SIZES = (10, 1_000, 10_000)
DISTRIBUTIONS = ("spread", "one-namespace")
IMPLS = ("index", "linear")
SELECTOR_SHAPES = 4


class LinearIndex(PolicyIndex):
    """The selection before the label index: every candidate of the kind and namespace
    through the precedence rules (what `PolicyIndex.select` did)."""

    def select(self, kind: str, obj: Mapping[str, Any] | ObjectView, namespace: str) -> Selection:
        return _select(self.candidates(kind, namespace), kind, view_of(obj), namespace)


def _scale_policy(name: str, namespace: str, kind: str, selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "VarmorPolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": f"u-{namespace}-{name}"},
        "spec": {"target": {"kind": kind, "selector": selector}},
        "status": {"profileName": f"varmor-{namespace}-{name}"},
    }


def _distinct_selector(i: int) -> dict[str, Any]:
    """The i-th of distinct selectors the benchmark Pod (app=web, tier=frontend) never matches,
    in four shapes; one in four shares the Pod's `app: web`."""
    shape = i % SELECTOR_SHAPES
    if shape == 0:
        return {"matchLabels": {"app": f"svc-{i}"}}
    if shape == 1:
        return {"matchLabels": {"app": "web", "tier": f"t-{i}"}}
    if shape == 2:
        return {"matchExpressions": [{"key": "app", "operator": "In", "values": [f"svc-{i}", f"alt-{i}"]}]}
    return {"matchExpressions": [{"key": f"feature-{i}", "operator": "Exists"}]}


def scale_policies(dist: str, n: int) -> list[dict[str, Any]]:
    """n policies; the benchmark Pod (namespace bench) matches exactly one, `web`.

    `spread`: 10 Pod policies in bench, the others 10 per namespace (team-0000, ...) over
    the four kinds. `one-namespace`: every policy a Pod policy in bench, each with its own
    selector (the worst case for the index: one (kind, namespace) group)."""
    web = _scale_policy("web", "bench", "Pod", {"matchLabels": {"app": "web"}})
    if dist == "one-namespace":
        return [web, *(_scale_policy(f"p{i}", "bench", "Pod", _distinct_selector(i)) for i in range(n - 1))]
    local = [web, *(_scale_policy(f"p{i}", "bench", "Pod", _distinct_selector(i)) for i in range(min(n, 10) - 1))]
    rest = n - len(local)
    namespaces = max(1, rest // 10)
    return local + [
        _scale_policy(
            f"p{i}",
            f"team-{i % namespaces:04d}",
            api.TARGET_KINDS[(i // namespaces) % len(api.TARGET_KINDS)],
            _distinct_selector(i),
        )
        for i in range(rest)
    ]


def registration_sizes(ca_pem: bytes) -> dict[str, dict[str, int]]:
    """JSON bytes of the webhook configurations the leader writes for 10,000 policies."""
    reg = Registration(name="varmor", namespace="varmor", excluded_namespaces=("kube-system", "varmor"))
    cases = {
        "spread": scale_policies("spread", 10_000),
        "one-namespace": scale_policies("one-namespace", 10_000),
        "10,000 namespaces": [
            _scale_policy("p", f"tenant-{i:05d}", "Pod", _distinct_selector(i)) for i in range(10_000)
        ],
        "10,000 namespaces, 63-char names": [
            _scale_policy("p", f"tenant-{i:05d}-" + "x" * 50, "Pod", _distinct_selector(i)) for i in range(10_000)
        ],
    }
    out: dict[str, dict[str, int]] = {}
    for name, policies in cases.items():
        mutating = mutating_configuration(reg, policies, ca_pem)
        unbounded = mutating_configuration(reg, policies, ca_pem, max_listed_namespaces=10**9)
        out[name] = {
            "mutating_bytes": len(orjson.dumps(mutating)),
            "mutating_entries": len(mutating["webhooks"]),
            "unbounded_bytes": len(orjson.dumps(unbounded)),
            "validating_bytes": len(orjson.dumps(validating_configuration(reg, ca_pem))),
        }
    return out


def index_build_ms(dist: str, n: int) -> dict[str, float]:
    """Building the index from scratch, and rebuilding it after one policy changed (as the
    webhook does on every change, from the index it replaces)."""
    policies = scale_policies(dist, n)
    t0 = time.perf_counter()
    first = PolicyIndex(policies)
    t1 = time.perf_counter()
    changed = list(policies)
    changed[len(changed) // 2] = orjson.loads(orjson.dumps(changed[len(changed) // 2]))  # a new object
    PolicyIndex(changed, previous=first)
    t2 = time.perf_counter()
    return {"full_ms": (t1 - t0) * 1e3, "one_change_ms": (t2 - t1) * 1e3}


def part_scale(seconds: float, conns: int, rounds: int, rate: float) -> dict[str, Any]:
    """/mutate for every (distribution, implementation, policy count), interleaved `rounds`
    times in a rotating order; medians reported, with every run's requests/s."""
    pod = orjson.loads(review_body())["request"]["object"]
    for dist in DISTRIBUTIONS:
        for n in SCALE_SIZES:  # the same answer from both: one match, no conflict, nothing pending
            policies = scale_policies(dist, n)
            sel = PolicyIndex(policies).select("Pod", pod, "bench")
            assert sel == LinearIndex(policies).select("Pod", pod, "bench"), (dist, n)
            assert sel.winner is not None, (dist, n)
            assert (sel.winner.candidate.name, sel.losers, sel.pending) == ("web", (), ()), (dist, n)
    configs = [(d, i, n) for d in DISTRIBUTIONS for i in IMPLS for n in SCALE_SIZES]
    runs: dict[tuple[str, str, int], dict[str, list[dict[str, Any]]]] = {c: {"max": [], "rate": []} for c in configs}
    with tempfile.TemporaryDirectory(prefix="varmor-bench-") as tmp_s:
        tmp = Path(tmp_s)
        binary = _workspace(tmp)

        def measure_all(mode: str, chosen: list[tuple[str, str, int]], at: float) -> None:
            for r in range(rounds):
                for config in chosen[r % len(chosen) :] + chosen[: r % len(chosen)]:
                    kind = f"scale:{config[0]}:{config[2]}:{config[1]}"
                    result = _measure(tmp, binary, kind, PRODUCT_LOOP, conns=conns, seconds=seconds, rate=at)
                    runs[config][mode].append(result)
                    print(f"round {r + 1} {mode} {kind}: {result['rps']:.0f} req/s", file=sys.stderr, flush=True)

        measure_all("max", configs, 0.0)
        # Latency at a fixed rate, for the servers that sustain it with room (an overloaded
        # one only queues: its latency is the load generator's timeout).
        able = [c for c in configs if statistics.median(i["rps"] for i in runs[c]["max"]) >= 1.5 * rate]
        if rate and able:
            measure_all("rate", able, rate)
        ca_pem = (tmp / "ca.crt").read_bytes()
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
    out: dict[str, Any] = {"rate": rate, "runs": {}, "registration": registration_sizes(ca_pem)}
    for dist, impl, n in configs:
        row: dict[str, Any] = {}
        for mode, items in runs[(dist, impl, n)].items():
            if items:
                row[mode] = {k: statistics.median(i[k] for i in items) for k in keys}
                row[mode]["runs"] = [round(i["rps"]) for i in items]
                row[mode]["errors"] = sum(i["errors"] for i in items)
        out["runs"][f"{dist}/{impl}/{n}"] = row
    for dist, impl, n in configs:  # paired within each round (the runs are adjacent): less drift
        row, base = runs[(dist, impl, n)]["max"], runs[(dist, impl, SCALE_SIZES[0])]["max"]
        out["runs"][f"{dist}/{impl}/{n}"]["ratio"] = statistics.median(
            r["rps"] / b["rps"] for r, b in zip(row, base, strict=True)
        )
        out["runs"][f"{dist}/{impl}/{n}"]["cpu_ratio"] = statistics.median(
            b["cpu_us_per_request"] / r["cpu_us_per_request"] for r, b in zip(row, base, strict=True)
        )
    out["build"] = {dist: index_build_ms(dist, SCALE_SIZES[-1]) for dist in DISTRIBUTIONS}
    out["select_us"] = {f"{d}/{i}/{n}": select_us(d, i, n) for d, i, n in configs}
    return out


def select_us(dist: str, impl: str, n: int) -> float:
    """`select` alone for the benchmark Pod, in-process (best of 5): the part of /mutate the
    number of policies can move, without the HTTP, TLS and JSON around it."""
    index = (PolicyIndex if impl == "index" else LinearIndex)(scale_policies(dist, n))
    pod = view_of(orjson.loads(review_body())["request"]["object"])
    calls = max(20, 20_000 // max(1, len(index.candidates("Pod", "bench")) // 50))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            index.select("Pod", pod, "bench")
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def print_scale(s: dict[str, Any]) -> None:
    for dist in DISTRIBUTIONS:
        for impl in IMPLS:
            for n in SCALE_SIZES:
                row = s["runs"][f"{dist}/{impl}/{n}"]
                m = row["max"]
                line = (
                    f"{dist:13s} {impl:6s} {n:6d} policies: {m['rps']:6.0f} req/s {m['runs']}, "
                    f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, {m['cpu_us_per_request']:.0f} us CPU/req, "
                    f"x{row['ratio']:.3f} of {SCALE_SIZES[0]} (paired per round; by CPU x{row['cpu_ratio']:.3f}), "
                    f"errors {m['errors']}"
                )
                if "rate" in row:
                    at = row["rate"]
                    line += f" | at {s['rate']:.0f} req/s: p50 {at['p50_ms']:.2f} ms, p99 {at['p99_ms']:.2f} ms"
                elif s["rate"]:
                    line += f" | cannot sustain {s['rate']:.0f} req/s"
                print(line)
    for dist in DISTRIBUTIONS:
        for impl in IMPLS:
            each = ", ".join(f"{n}: {s['select_us'][f'{dist}/{impl}/{n}']:.2f} us" for n in SCALE_SIZES)
            print(f"select() alone, {dist} {impl}: {each}")
    for dist in DISTRIBUTIONS:
        gains = ", ".join(
            f"{n}: x{s['runs'][f'{dist}/index/{n}']['max']['rps'] / s['runs'][f'{dist}/linear/{n}']['max']['rps']:.2f}"
            for n in SCALE_SIZES
        )
        print(f"index/linear scan requests/s, {dist}: {gains}")
    for dist in DISTRIBUTIONS:
        row = s["runs"][f"{dist}/index/{SCALE_SIZES[-1]}"]
        verdict = "met" if row["ratio"] >= 0.9 else "NOT met"
        big, small = SCALE_SIZES[-1], SCALE_SIZES[0]
        print(f"goal {dist}: index at {big} policies x{row['ratio']:.3f} of {small} (>= 0.9): {verdict}")
        b = s["build"][dist]
        print(f"index build {dist} at {big}: {b['full_ms']:.0f} ms, after one change {b['one_change_ms']:.0f} ms")
    for name, size in s["registration"].items():
        print(
            f"registration for 10,000 policies, {name}: MutatingWebhookConfiguration {size['mutating_bytes']} bytes "
            f"({size['mutating_entries']} entries; {size['unbounded_bytes']} without the namespace bound), "
            f"ValidatingWebhookConfiguration {size['validating_bytes']} bytes"
        )


# -- end to end through the real API server ---------------------------------------------


async def _run_varmor(kubeconfig: str, install_ns: str, port: int) -> None:
    """Child process: varmor's webhook role + leader tasks, exactly as `varmor run` runs them."""
    from varmor.app import add_common_arguments, setup_logging
    from varmor.kube.client import new_api_client
    from varmor.kube.context import Health, RoleContext
    from varmor.kube.serverversion import ServerVersion
    from varmor.reconcile import webhooks as leader
    from varmor.webhook import role

    setup_logging("warning")
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    role.add_arguments(parser)
    args = parser.parse_args(
        [
            f"--namespace={install_ns}",
            "--bind-address=127.0.0.1",
            f"--webhook-port={port}",
            f"--webhook-url=https://127.0.0.1:{port}",
            f"--webhook-config-name={install_ns}",
            "--unprotected-audit-interval=0",
        ]
    )
    api_client = await new_api_client(kubeconfig)
    server = await ServerVersion.read(api_client, interval=0)
    roles = frozenset({"webhook", "leader"})
    ctx = RoleContext(args=args, api_client=api_client, health=Health(), roles=roles, server=server)
    tasks = asyncio.gather(role.run(ctx), leader.run_leader_tasks(ctx))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, tasks.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await tasks
    from prometheus_client import REGISTRY

    count = REGISTRY.get_sample_value("varmor_admission_duration_seconds_count", {"endpoint": "mutate"}) or 0
    total = REGISTRY.get_sample_value("varmor_admission_duration_seconds_sum", {"endpoint": "mutate"}) or 0
    buckets = {
        s.labels["le"]: s.value
        for m in REGISTRY.collect()
        if m.name == "varmor_admission_duration_seconds"
        for s in m.samples
        if s.name.endswith("_bucket") and s.labels.get("endpoint") == "mutate"
    }
    summary = {"handler_calls": count, "handler_mean_us": total / max(count, 1) * 1e6, "buckets": buckets}
    print(json.dumps(summary), flush=True)


async def _e2e(kubeconfig: str, n: int) -> dict[str, Any]:
    import yaml
    from kubernetes.aio import client

    from varmor.kube import paths
    from varmor.kube.client import new_api_client, raw_request
    from varmor.kube.kube import MERGE_PATCH

    api_client = await new_api_client(kubeconfig)
    core = client.CoreV1Api(api_client)
    ext = client.ApiextensionsV1Api(api_client)
    for path in sorted((ROOT / "chart" / "crds").glob("*.yaml")):
        await ext.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    for path in sorted((ROOT / "chart" / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        while True:
            crd = await ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                break
            await asyncio.sleep(0.1)
    for ns in ("varmor", "with", "without", "echo", "goecho", "gopatch"):
        await core.create_namespace({"metadata": {"name": ns}})
    await asyncio.sleep(1.0)  # discovery of the new kinds
    custom = client.CustomObjectsApi(api_client)
    policy = {
        "apiVersion": api.API_VERSION,
        "kind": "VarmorPolicy",
        "metadata": {"name": "all", "namespace": "with"},
        "spec": {
            "target": {"kind": "Pod", "selector": {}},
            "policy": {"enforcer": "AppArmor", "mode": "RuntimeDefault"},
        },
    }
    for _ in range(50):
        try:
            await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, "with", "varmorpolicies", policy)
            break
        except Exception:
            await asyncio.sleep(0.2)
    await raw_request(
        api_client,
        "PATCH",
        f"/apis/{api.GROUP}/{api.VERSION}/namespaces/with/varmorpolicies/all/status",
        body={"status": {"profileName": "varmor-with-all"}},
        content_type=MERGE_PATCH,
    )

    def pod(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}

    port = free_port()
    child = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "varmor", kubeconfig, "varmor", str(port)], stdout=subprocess.PIPE, text=True
    )
    tmp = Path(tempfile.mkdtemp(prefix="varmor-bench-echo-"))
    ca = pki.new_ca("echo-ca", dt.timedelta(hours=1))
    leaf = pki.issue(ca, "echo", dt.timedelta(hours=1), ip_addresses=("127.0.0.1",))
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    echo_port = free_port()
    echo = start_server("echo", echo_port, tmp / "tls.crt", tmp / "tls.key")
    go_echo_binary = build_go(ECHO_DIR, tmp, "echowebhook")
    # The patch varmor answers for these pods: a Go webhook returning it without any work
    # is the floor of any *mutating* webhook here.
    fixed_patch = orjson.dumps(plan_patch("Pod", pod("x"), "varmor-with-all")).decode()
    ports = {"echo": echo_port}
    go_echoes = []
    for ns, extra in (("goecho", []), ("gopatch", [f"-patch={fixed_patch}"])):
        ports[ns] = free_port()
        go_echoes.append(
            subprocess.Popen(  # noqa: ASYNC220
                [
                    str(go_echo_binary),
                    f"-addr=127.0.0.1:{ports[ns]}",
                    f"-cert={tmp / 'tls.crt'}",
                    f"-key={tmp / 'tls.key'}",
                    "-http2=false",  # HTTP/1.1 like aiohttp: the difference is then the stack alone
                    *extra,
                ]
            )
        )
        wait_for_port(ports[ns])
    for ns, echo_port_ in ports.items():
        await raw_request(
            api_client,
            "POST",
            paths.webhook_config_path("MutatingWebhookConfiguration"),
            body={
                "metadata": {"name": f"bench-{ns}"},
                "webhooks": [
                    {
                        "name": f"pods.{ns}.bench.varmor.org",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "timeoutSeconds": 5,
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{echo_port_}/mutate",
                            "caBundle": base64.b64encode(ca.cert_pem).decode(),
                        },
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                        "rules": [
                            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
                        ],
                    }
                ],
            },
        )
    try:

        async def create(ns: str, name: str) -> tuple[float, dict[str, Any]]:
            t0 = time.perf_counter()
            created = await raw_request(api_client, "POST", f"/api/v1/namespaces/{ns}/pods", body=pod(name))
            return time.perf_counter() - t0, created

        for i in range(600):  # wait until the API server calls varmor
            _, created = await create("with", f"warm-{i}")
            if (created["spec"]["containers"][0].get("securityContext") or {}).get("appArmorProfile"):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("webhook never took effect")
        arms = ("with", "without", "echo", "goecho", "gopatch")
        for i in range(50):  # warm every path
            for ns in arms:
                await create(ns, f"w2-{i}")
        lat: dict[str, list[float]] = {ns: [] for ns in arms}
        for i in range(n):
            for ns in arms[i % len(arms) :] + arms[: i % len(arms)]:  # rotate the order
                seconds, created = await create(ns, f"p-{i}")
                mutated = bool((created["spec"]["containers"][0].get("securityContext") or {}).get("appArmorProfile"))
                assert mutated == (ns in ("with", "gopatch")), (ns, created["spec"])
                lat[ns].append(seconds * 1000)
    finally:
        child.terminate()
        handler = json.loads((child.communicate(timeout=20)[0] or "{}").strip().splitlines()[-1] or "{}")
        echo.terminate()
        echo.wait(10)
        for proc in go_echoes:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        await api_client.close()

    def summary(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        return {
            "mean_ms": statistics.fmean(values),
            "p50_ms": values[len(values) // 2],
            "p99_ms": values[int(0.99 * (len(values) - 1))],
        }

    out: dict[str, Any] = {"n": n, "varmor_handler": handler}
    for ns in arms:
        out[ns] = summary(lat[ns])
    for ns in ("with", "echo", "goecho", "gopatch"):
        out[f"{ns}_ratio_mean"] = out[ns]["mean_ms"] / out["without"]["mean_ms"]
        out[f"{ns}_ratio_p50"] = out[ns]["p50_ms"] / out["without"]["p50_ms"]
    return out


def part_e2e(n: int) -> dict[str, Any]:
    from varmor.dev.cluster import ControlPlane

    workdir = Path(tempfile.mkdtemp(prefix="varmor-bench-cp-"))
    plane = ControlPlane(workdir)
    try:
        state = plane.start()
        return asyncio.run(_e2e(state.kubeconfig, n))
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        run_on_loop(_serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]), sys.argv[6])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "varmor":
        run_on_loop(_run_varmor(sys.argv[2], sys.argv[3], int(sys.argv[4])), PRODUCT_LOOP)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "server", "e2e", "scale"), default="all")
    parser.add_argument("--seconds", type=float, default=8.0, help="per load-generator run")
    parser.add_argument("--conns", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per server (medians reported)")
    parser.add_argument("--pods", type=int, default=300, help="pod creations per namespace (e2e)")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop req/s for latency (scale; 0: none)")
    args = parser.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if args.part in ("all", "server"):
        out["server"] = part_server(args.seconds, args.conns, args.rounds)
        s = out["server"]
        for loop in LOOPS:
            for kind in ("bare", "varmor"):
                m, h = s[loop][kind]["max"], s[loop][kind]["half"]
                half = ""
                if h:
                    half = f" | at {h['rps']:.0f} req/s: p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms"
                print(
                    f"{kind:6s} on {loop:7s} max {m['rps']:6.0f} req/s {m['runs']}, {m['cpu_us_per_request']:.0f} us "
                    f"CPU/req (p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, errors {m['errors']}){half}"
                )
            print(f"varmor/bare on {loop}: {s[loop]['ratio']:.1%} wall, {s[loop]['cpu_ratio']:.1%} by CPU per request")
        print(
            f"varmor as `varmor run` serves ({PRODUCT_LOOP}) / the faster bare ceiling: "
            f"{s['product_vs_best_bare']:.1%} (review {s['review_bytes']} bytes)"
        )
    if args.part == "scale":
        out["scale"] = part_scale(args.seconds, args.conns, args.rounds, args.rate)
        print_scale(out["scale"])
    if args.part in ("all", "e2e"):
        out["e2e"] = part_e2e(args.pods)
        e = out["e2e"]
        for ns in ("without", "goecho", "echo", "gopatch", "with"):
            print(
                f"pod create {ns:7s}: mean {e[ns]['mean_ms']:.2f} ms, p50 {e[ns]['p50_ms']:.2f} ms, "
                f"p99 {e[ns]['p99_ms']:.2f} ms (n={e['n']})"
            )
        for ns, label in (
            ("with", "varmor"),
            ("echo", "Python echo webhook"),
            ("goecho", "Go echo webhook"),
            ("gopatch", "Go fixed-patch webhook"),
        ):
            print(f"{label}/no webhook: mean {e[f'{ns}_ratio_mean']:.3f}x, p50 {e[f'{ns}_ratio_p50']:.3f}x")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
