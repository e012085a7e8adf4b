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

# Address families of the pinned ABI (varmor/data/apparmor-features), without unspec and
# unix. Used when UNIX sockets are denied: see `network_allows` below.
NETWORK_FAMILIES = (
    "inet",
    "ax25",
    "ipx",
    "appletalk",
    "netrom",
    "bridge",
    "atmpvc",
    "x25",
    "inet6",
    "rose",
    "netbeui",
    "security",
    "key",
    "netlink",
    "packet",
    "ash",
    "econet",
    "atmsvc",
    "rds",
    "sna",
    "irda",
    "pppox",
    "wanpipe",
    "llc",
    "ib",
    "mpls",
    "can",
    "tipc",
    "bluetooth",
    "iucv",
    "rxrpc",
    "isdn",
    "phonet",
    "ieee802154",
    "caif",
    "alg",
    "nfc",
    "vsock",
    "kcm",
    "qipcrtr",
    "smc",
    "xdp",
)

# abstractions/base minus its file rules (the bodies allow `file,`) and minus its unix
# rules, which on kernels without fine-grained unix mediation are downgraded to
# `network unix` allows and would re-open UNIX sockets.
BASE_WITHOUT_UNIX = (
    "ptrace (readby),",
    "ptrace (tracedby),",
    "ptrace (read) peer=@{profile_name},",
    "signal (receive) peer=unconfined,",
    "signal peer=@{profile_name},",
    'signal (receive, send) set=("exists"),',
)

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
RUNTIME_SIGNALS = (
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


def network_allows(deny_unix: bool) -> list[str]:
    """`network,` or, when UNIX sockets are to be denied, every other family.

    Under `abi <abi/3.0>` the parser turns `deny network unix` (and the unix part of
    `deny network`) into a fine-grained unix rule; kernels without unix mediation (all
    mainline kernels) cannot enforce a unix deny, and the parser drops it ("can't be
    downgraded", an error under --Werror=rule-not-enforced). Not allowing unix at all is
    enforced everywhere: by the generic network check on mainline, by unix mediation on
    Ubuntu kernels."""
    if not deny_unix:
        return ["network,"]
    return [f"network {family}," for family in NETWORK_FAMILIES]


def always_allow_body(deny_unix: bool = False) -> list[str]:
    lines: list[str] = []
    for rule in ALWAYS_ALLOW_BODY:
        if rule == "network":
            lines += network_allows(deny_unix)
        elif not (rule == "unix" and deny_unix):
            lines.append(f"{rule},")
    return lines


def runtime_default_body(qualifier: str, allowed: bool, peers: Sequence[str], deny_unix: bool = False) -> list[str]:
    """containerd's default profile; `peers` are the labels of this profile family
    (itself, and `<name>//*` when it has children) that may signal and trace each other."""
    lines: list[str] = []
    for rule in _RUNTIME_DEFAULT_ALLOW:
        lines += network_allows(deny_unix) if rule == "network" else [f"{rule},"]
    lines += [f"{rule}," for rule in RUNTIME_SIGNALS]
    lines += [f"signal (send,receive) peer={peer}," for peer in peers]
    for rule, perms in _RUNTIME_DEFAULT_DENIES:
        if allowed and "x" in perms:
            perms = perms.replace("x", "ix")
        lines.append(f"{qualifier} {rule} {perms},".replace(" ,", ","))
    lines += [f"ptrace (trace,read,tracedby,readby) peer={peer}," for peer in peers]
    return lines
