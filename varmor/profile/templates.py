"""Base bodies of generated profiles: AlwaysAllow and containerd's RuntimeDefault.

RuntimeDefault reproduces containerd's `cri-containerd.apparmor.d` as vArmor clones it
(with /proc/mem and /proc/kmem added to the rwklx denies). In EnhanceProtect mode its deny
qualifier becomes the policy's qualifier, so `allowViolations`/`auditViolations` apply to
the base too, as in vArmor. The AlwaysAllow body is vArmor's minus `dbus,`: no mainline
kernel mediates D-Bus, and the pinned ABI's compile check (--Werror=rule-not-enforced)
refuses the rule rather than silently dropping it.
"""

from __future__ import annotations

from collections.abc import Sequence

ALWAYS_ALLOW_BODY = (
    "file",
    "capability",
    "network",
    "mount",
    "remount",
    "umount",
    "pivot_root",
    "ptrace",
    "signal",
    "unix",
)

_RUNTIME_DEFAULT_ALLOW = ("network", "capability", "file", "umount")
_RUNTIME_DEFAULT_SIGNALS = (
    # Host (unconfined) processes, runc and crun may signal the container (stop, kill).
    "signal (receive) peer=unconfined",
    "signal (receive) peer=runc",
    "signal (receive) peer=crun",
)
# (path or rule, permissions); permissions containing x need `ix` when allowed.
_RUNTIME_DEFAULT_DENIES: tuple[tuple[str, str], ...] = (
    ("@{PROC}/*", "w"),
    ("@{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9]*}/**", "w"),
    ("@{PROC}/sys/[^k]**", "w"),
    ("@{PROC}/sys/kernel/{?,??,[^s][^h][^m]**}", "w"),
    ("@{PROC}/{sysrq-trigger,mem,kmem,kcore}", "rwklx"),
    ("mount", ""),
    ("/sys/[^f]*/**", "wklx"),
    ("/sys/f[^s]*/**", "wklx"),
    ("/sys/fs/[^c]*/**", "wklx"),
    ("/sys/fs/c[^g]*/**", "wklx"),
    ("/sys/fs/cg[^r]*/**", "wklx"),
    ("/sys/firmware/**", "rwklx"),
    ("/sys/devices/virtual/powercap/**", "rwklx"),
    ("/sys/kernel/security/**", "rwklx"),
)


def always_allow_body() -> list[str]:
    return [f"{rule}," for rule in ALWAYS_ALLOW_BODY]


def runtime_default_body(qualifier: str, allowed: bool, peers: Sequence[str]) -> list[str]:
    """containerd's default profile; `peers` are the labels of this profile family
    (itself, and `<name>//*` when it has children) that may signal and trace each other."""
    lines = [f"{rule}," for rule in _RUNTIME_DEFAULT_ALLOW]
    lines += [f"{rule}," for rule in _RUNTIME_DEFAULT_SIGNALS]
    lines += [f"signal (send,receive) peer={peer}," for peer in peers]
    for rule, perms in _RUNTIME_DEFAULT_DENIES:
        if allowed and "x" in perms:
            perms = perms.replace("x", "ix")
        lines.append(f"{qualifier} {rule} {perms},".replace(" ,", ","))
    lines += [f"ptrace (trace,read,tracedby,readby) peer={peer}," for peer in peers]
    return lines
