"""Benchmark: profile rendering, and `--check` against bare apparmor_parser.

Policy: EnhanceProtect with 30 catalog rules and 3 targets (RuntimeDefault base).
Measures, in one run:
- render: parse_policy + build_profile (pure Python), median over many iterations;
- check: varmor.parser.compile_check on the rendered text (temp files + parser);
- bare: the same `apparmor_parser` command line on a file already on disk.

Usage: .venv/bin/python bench/bench_render.py [--iterations N] [--check-runs N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from varmor.parser import compile_check, compile_command, write_sample_include
from varmor.policy import parse_policy
from varmor.profile import build_profile

HARDENING = [
    "disallow-write-core-pattern",
    "disallow-mount-securityfs",
    "disallow-mount-procfs",
    "disallow-write-release-agent",
    "disallow-mount-cgroupfs",
    "disallow-debug-disk-device",
    "disallow-umount",
    "disallow-insmod",
    "disallow-load-bpf-prog",
    "disallow-access-kallsyms",
    "disallow-abuse-user-ns",
    "disallow-create-af-packet",
    "disable-cap-privileged",
    "disable-cap-net-raw",
]
ATTACK = [
    "mitigate-sa-leak",
    "mitigate-disk-device-number-leak",
    "mitigate-overlayfs-leak",
    "mitigate-host-ip-leak",
    "disable-write-etc",
    "disable-busybox",
    "disable-shell",
    "disable-access-shadow",
    "disable-access-ssh-dir",
    "block-access-to-container-runtime",
    "disable-icmp",
]
TARGETED = ["disable-wget", "disable-curl"]
VUL = ["cgroups-lxcfs-escape-mitigation", "runc-override-mitigation", "copy-fail-mitigation"]
TARGETS = ["/usr/bin/python3", "/usr/bin/node", "/opt/app/server"]
assert len(HARDENING) + len(ATTACK) + len(TARGETED) + len(VUL) == 30


def policy_doc() -> dict[str, Any]:
    return {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "VarmorPolicy",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"app": "bench"}}},
            "policy": {
                "enforcer": "AppArmor",
                "mode": "EnhanceProtect",
                "enhanceProtect": {
                    "hardeningRules": HARDENING,
                    "attackProtectionRules": [
                        {"rules": ATTACK},
                        {"rules": TARGETED[:1], "targets": TARGETS[:2]},
                        {"rules": TARGETED, "targets": TARGETS[2:]},
                    ],
                    "vulMitigationRules": VUL,
                    "auditViolations": True,
                },
            },
        },
    }


def timed(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--iterations", type=int, default=2000)
    args.add_argument("--check-runs", type=int, default=30)
    opts = args.parse_args()

    doc = policy_doc()
    built = build_profile(parse_policy(doc), "varmor-default-bench")

    def render() -> None:
        build_profile(parse_policy(doc), "varmor-default-bench")

    render_times = timed(render, opts.iterations)

    def check() -> None:
        assert compile_check({"bench": built.text})["bench"].ok

    with tempfile.TemporaryDirectory() as tmp:
        inc = write_sample_include(Path(tmp) / "inc")
        path = Path(tmp) / "bench.aa"
        path.write_text(built.text)
        cmd = compile_command([path], [inc])

        def bare() -> None:
            subprocess.run(cmd, check=True, capture_output=True)

        # Interleave so both see the same machine load.
        check_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(opts.check_runs):
            check_times += timed(check, 1)
            bare_times += timed(bare, 1)

    def ms(values: list[float]) -> str:
        q = statistics.quantiles(values, n=20)
        return f"median {statistics.median(values) * 1e3:.3f} ms, p95 {q[18] * 1e3:.3f} ms"

    children = built.text.count("  profile child_")
    print(f"policy: 30 rules, 3 targets -> {children} child profiles, {len(built.text)} bytes")
    print(f"python {platform.python_version()}, {platform.machine()}")
    print(f"render (parse_policy + build_profile), {opts.iterations} runs: {ms(render_times)}")
    print(f"--check (compile_check), {opts.check_runs} runs: {ms(check_times)}")
    print(f"bare apparmor_parser, same text, {opts.check_runs} runs: {ms(bare_times)}")
    overhead = statistics.median(check_times) - statistics.median(bare_times)
    print(f"compile_check overhead over bare parser: {overhead * 1e3:.3f} ms (median)")


if __name__ == "__main__":
    main()
