"""Hand-written profiles that prove the harness and the kernel facts varmor relies on.

Why: before trusting a rule's proof, the layer itself must be shown to tell ALLOW from
DENY, to see the kernel's audit records, and to load profiles the way the agent does.
This module also answers the live-update question: does a process
already running under a profile see the new verdict after the profile is replaced?
Each check is one parametrized test; the whole module is one qemu boot.
"""

from __future__ import annotations

from collections.abc import Callable

import aavm
import pytest

pytestmark = pytest.mark.kernel

#: Every capability of Linux 6.1 (0..40), in kernel order.
CAPABILITIES = (
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
)
UNPROVABLE_CAPS = aavm.UNPROVABLE_CAPS

ALLOW_ALL = """  file,
  capability,
  network,
  signal,
  ptrace,
  mount,
  remount,
  umount,
  pivot_root,
"""


def profile(
    name: str, body: str = "", flags: str = "attach_disconnected", base: str = ALLOW_ALL, abi: bool = True
) -> str:
    """A profile in the shape varmor generates (abi line, tunables, allow-all base)."""
    head = "abi <abi/3.0>,\n" if abi else ""
    return f"{head}include <tunables/global>\nprofile {name} flags=({flags}) {{\n{base}{body}}}\n"


def build() -> aavm.Batch:
    b = aavm.Batch("harness")

    # -- the basics: deny, allow, and that the denial comes from AppArmor ------------
    c = b.case("basic")
    c.sh("echo secret > /tmp/secret")
    c.load_bin("load", "p.bin", profile("vk-basic", "  deny /tmp/secret r,\n  deny network packet,\n"))
    c.expect_label("label", "vk-basic (enforce)", profile="vk-basic")
    c.expect("read-denied", "DENY", "read /tmp/secret", profile="vk-basic")
    c.expect("read-other-allowed", "ALLOW", "read /etc/passwd", profile="vk-basic")
    c.expect("read-unconfined-allowed", "ALLOW", "read /tmp/secret")
    c.expect("packet-denied", "DENY", "socket packet raw", profile="vk-basic")
    c.expect("inet-allowed", "ALLOW", "socket inet dgram", profile="vk-basic")
    c.expect("packet-unconfined-allowed", "ALLOW", "socket packet raw")
    c.run("aa-exec-denied", "aa-exec -p vk-basic -- /vprobe read /tmp/secret | grep -q 'RESULT DENY'")
    # A plain `deny` is quiet: AppArmor does not audit explicit denials by default.
    c.expect_no_audit("deny-is-quiet", 'profile="vk-basic"', 'apparmor="DENIED"')

    # -- audit deny: the denial is logged (what auditViolations relies on) -----------
    c = b.case("audit-deny")
    c.sh("echo secret > /tmp/secret")
    c.load_bin("load", "p.bin", profile("vk-auditdeny", "  audit deny /tmp/secret r,\n  audit deny network packet,\n"))
    c.expect("read-denied", "DENY", "read /tmp/secret", profile="vk-auditdeny")
    c.expect("packet-denied", "DENY", "socket packet raw", profile="vk-auditdeny")
    c.expect_audit(
        "open-record",
        'apparmor="DENIED"',
        'operation="open"',
        'profile="vk-auditdeny"',
        'name="/tmp/secret"',
        'denied_mask="r"',
    )
    c.expect_audit(
        "create-record", 'apparmor="DENIED"', 'operation="create"', 'profile="vk-auditdeny"', 'family="packet"'
    )

    # A name with a space is logged hex-encoded, without quotes (audit_log_untrustedstring).
    c = b.case("audit-hex-name")
    c.sh("echo secret > '/tmp/with space'")
    c.load_bin("load", "p.bin", profile("vk-hexname", '  audit deny "/tmp/with space" r,\n'))
    c.expect("read-denied", "DENY", ["read", "/tmp/with space"], profile="vk-hexname")
    c.expect_audit(
        "hex-record", 'apparmor="DENIED"', 'profile="vk-hexname"', f"name={b'/tmp/with space'.hex().upper()} "
    )

    # -- audit (allowed and logged: auditViolations + allowViolations) ---------------
    c = b.case("audit-allow")
    c.sh("echo secret > /tmp/secret")
    c.load_bin("load", "p.bin", profile("vk-audit", "  audit /tmp/secret r,\n  audit network packet,\n"))
    c.expect("read-allowed", "ALLOW", "read /tmp/secret", profile="vk-audit")
    c.expect("packet-allowed", "ALLOW", "socket packet raw", profile="vk-audit")
    c.expect_audit("open-record", 'apparmor="AUDIT"', 'operation="open"', 'profile="vk-audit"', 'name="/tmp/secret"')
    c.expect_audit("create-record", 'apparmor="AUDIT"', 'operation="create"', 'profile="vk-audit"', 'family="packet"')

    # -- complain mode: what is not allowed is logged as ALLOWED ----------------------
    c = b.case("complain")
    c.sh("echo secret > /tmp/secret; echo other > /tmp/other")
    c.load_bin(
        "load", "p.bin", profile("vk-complain", "  /tmp/public r,\n  deny /tmp/secret r,\n", flags="complain", base="")
    )
    c.expect_label("label", "vk-complain (complain)", profile="vk-complain")
    c.expect("unlisted-read-allowed", "ALLOW", "read /tmp/other", profile="vk-complain")
    c.expect("unlisted-socket-allowed", "ALLOW", "socket inet6 stream", profile="vk-complain")
    # An explicit deny rule is still enforced in complain mode.
    c.expect("deny-still-enforced", "DENY", "read /tmp/secret", profile="vk-complain")
    c.expect_audit(
        "allowed-record", 'apparmor="ALLOWED"', 'operation="open"', 'profile="vk-complain"', 'name="/tmp/other"'
    )

    # -- an allow-list profile (no allow-all base): unlisted access is denied --------
    c = b.case("allowlist")
    c.sh("echo p > /tmp/public; echo s > /tmp/secret")
    c.load_bin(
        "load",
        "p.bin",
        profile("vk-allowlist", "  /vprobe rix,\n  /tmp/public r,\n  /proc/@{pid}/attr/current r,\n", base=""),
    )
    c.expect("listed-allowed", "ALLOW", "read /tmp/public", profile="vk-allowlist")
    c.expect("unlisted-denied", "DENY", "read /tmp/secret", profile="vk-allowlist")
    c.expect("socket-denied", "DENY", "socket unix stream", profile="vk-allowlist")
    c.expect("exec-denied", "DENY", "exec /bin/busybox true", profile="vk-allowlist")
    c.expect_audit(
        "denied-record", 'apparmor="DENIED"', 'operation="open"', 'profile="vk-allowlist"', 'name="/tmp/secret"'
    )

    # -- every capability: allowed under allow-all, denied (and audited) one by one --
    c = b.case("caps")
    c.load_bin("load-all", "all.bin", profile("vk-cap-all"))
    for cap in CAPABILITIES:
        want = "ERROR" if cap in UNPROVABLE_CAPS else "ALLOW"
        c.expect(f"{cap}-allowed", want, f"cap {cap}", profile="vk-cap-all")
        c.expect(f"{cap}-unconfined", want, f"cap {cap}")
    for cap in CAPABILITIES:
        name = f"vk-cap-{cap.replace('_', '-')}"
        c.load_bin(f"load-{cap}", f"{cap}.bin", profile(name, f"  audit deny capability {cap},\n"))
        if cap in UNPROVABLE_CAPS:
            c.expect(f"{cap}-unprovable", "ERROR", f"cap {cap}", profile=name)
            c.expect_no_audit(f"{cap}-no-record", f'profile="{name}"', 'operation="capable"')
            continue
        c.expect(f"{cap}-denied", "DENY", f"cap {cap}", profile=name)
        c.expect_audit(
            f"{cap}-record", 'apparmor="DENIED"', 'operation="capable"', f'profile="{name}"', f'capname="{cap}"'
        )

    # -- the vprobe operation vocabulary: each op ALLOWed and DENYed -----------------
    c = b.case("ops")
    c.sh(
        "mkdir -p /tmp/ops /mnt/ops-src /mnt/ops-dst /mnt/ops-u /mnt/ops-m && "
        "echo x > /tmp/ops/w && echo x > /tmp/ops/c && echo x > /tmp/ops/src && "
        "cp /bin/busybox /tmp/ops/bin && mount -t tmpfs none /mnt/ops-m && "
        "/vprobe serve-unix @vk-ops >/dev/null && /vprobe serve-unix /tmp/ops/sock >/dev/null"
    )
    c.load_bin("load-all", "all.bin", profile("vk-ops-all"))
    c.load_bin(
        "load-deny",
        "deny.bin",
        profile(
            "vk-ops-deny",
            (
                "  deny /tmp/ops/w w,\n  deny /tmp/ops/new w,\n  deny /tmp/ops/dst l,\n"
                "  deny /tmp/ops/bin x,\n  deny /tmp/ops/c w,\n  deny /tmp/ops/sock w,\n"
                "  deny mount,\n  deny remount,\n  deny umount,\n  deny ptrace read,\n"
            ),
        ),
    )
    ops = [
        ("write", "write /tmp/ops/w"),
        ("create", "create /tmp/ops/new"),
        ("link", "link /tmp/ops/src /tmp/ops/dst"),
        ("exec", "exec /tmp/ops/bin true"),
        ("chmod", "chmod /tmp/ops/c 0600"),
        ("connect-path", "connect-unix /tmp/ops/sock"),
        ("mount", "mount tmpfs none /mnt/ops-dst"),
        ("bind", "bind /mnt/ops-src /mnt/ops-dst"),
        ("rbind", "rbind /mnt/ops-src /mnt/ops-dst"),
        ("move", "move /mnt/ops-m /mnt/ops-dst"),
        ("remount", "remount /mnt/ops-m"),
        ("ptrace-read", "ptrace-read 1"),
    ]
    for name, op in ops:
        c.expect(f"{name}-allowed", "ALLOW", op, profile="vk-ops-all")
        # Mainline 6.1 has no AppArmor hook on connect(2) of a path-based UNIX socket:
        # a file rule on the socket path does not stop it.
        want = "ALLOW" if name == "connect-path" else "DENY"
        verdict = "allowed" if want == "ALLOW" else "denied"
        c.expect(f"{name}-{verdict}-by-deny-profile", want, op, profile="vk-ops-deny")
    c.expect("connect-abstract-allowed", "ALLOW", "connect-unix @vk-ops", profile="vk-ops-all")
    c.sh("mount -t tmpfs none /mnt/ops-u")
    c.expect("umount-denied", "DENY", "umount /mnt/ops-u", profile="vk-ops-deny")
    c.expect("umount-allowed", "ALLOW", "umount /mnt/ops-u", profile="vk-ops-all")

    # -- UNIX sockets on a mainline kernel ---------------------------------------------
    # `deny network unix,` does not compile with --Werror=rule-not-enforced ("deny unix
    # socket rule not enforced, can't be downgraded to generic network rule"), yet,
    # compiled without that flag, the kernel DOES enforce it at socket(2) (the family
    # check of network mediation), and audits it. Leaving unix out of an explicit
    # network allow-list also denies it.
    c = b.case("unix")
    c.sh("/vprobe serve-unix @vk-unix >/dev/null")
    c.load_bin("load-deny", "deny.bin", profile("vk-unix-deny", "  audit deny network unix,\n"), werror=False)
    c.expect("lenient-deny-network-unix-enforced", "DENY", "socket unix stream", profile="vk-unix-deny")
    c.expect("lenient-deny-network-unix-connect", "DENY", "connect-unix @vk-unix", profile="vk-unix-deny")
    c.expect("lenient-deny-network-unix-inet-allowed", "ALLOW", "socket inet stream", profile="vk-unix-deny")
    c.expect_audit(
        "lenient-deny-network-unix-record",
        'apparmor="DENIED"',
        'operation="create"',
        'profile="vk-unix-deny"',
        'family="unix"',
    )
    c.load_bin(
        "load-allowlist",
        "al.bin",
        profile(
            "vk-unix-al",
            base=ALLOW_ALL.replace("  network,\n", "  network inet,\n  network inet6,\n  network netlink,\n"),
        ),
    )
    c.expect("unlisted-unix-denied", "DENY", "socket unix stream", profile="vk-unix-al")
    c.expect("unlisted-connect-denied", "DENY", "connect-unix @vk-unix", profile="vk-unix-al")
    c.expect("listed-inet-allowed", "ALLOW", "socket inet stream", profile="vk-unix-al")

    # -- profiles compiled by the parser in the guest (what a node's agent does) -----
    c = b.case("in-guest-parser")
    c.load_text("load", "p.profile", profile("vk-text", "  deny network inet6,\n  deny /etc/hostname r,\n"))
    c.sh("echo h > /etc/hostname")
    c.expect("inet6-denied", "DENY", "socket inet6 stream", profile="vk-text")
    c.expect("file-denied", "DENY", "read /etc/hostname", profile="vk-text")
    c.expect("inet-allowed", "ALLOW", "socket inet stream", profile="vk-text")
    # The pitfall behind "abi line required": without it (and with no policy-features
    # in parser.conf) 3.0.8 drops every network rule; only rule-not-enforced catches it.
    noabi = c.profile_text("noabi.profile", profile("vk-noabi", "  deny network inet6,\n", abi=False))
    c.run(
        "noabi-refused-with-werror", f"! apparmor_parser -r --warn=rule-not-enforced --Werror=rule-not-enforced {noabi}"
    )
    c.run("noabi-loads-without-werror", f"apparmor_parser -r {noabi}")
    c.expect("noabi-network-rule-lost", "ALLOW", "socket inet6 stream", profile="vk-noabi")

    # -- child profiles: application granularity ------------------------------------
    c = b.case("child")
    c.sh(
        "mkdir -p /run/secrets && echo token > /run/secrets/token && "
        "cp /vprobe /usr/bin/vk-target && cp /vprobe /usr/bin/vk-other"
    )
    c.load_bin(
        "load",
        "p.bin",
        profile(
            "vk-parent",
            (
                "  /usr/bin/vk-target cx -> vk-target,\n"
                "  profile vk-target flags=(attach_disconnected) {\n"
                f"{ALLOW_ALL}"
                "    audit deny /run/secrets/token r,\n"
                "  }\n"
            ),
        ),
    )
    c.expect_label("target-label", "vk-parent//vk-target (enforce)", profile="vk-parent", target="/usr/bin/vk-target")
    c.expect("target-denied", "DENY", "read /run/secrets/token", profile="vk-parent", target="/usr/bin/vk-target")
    c.expect(
        "other-binary-allowed", "ALLOW", "read /run/secrets/token", profile="vk-parent", target="/usr/bin/vk-other"
    )
    c.expect("parent-allowed", "ALLOW", "read /run/secrets/token", profile="vk-parent")
    c.expect_audit("child-record", 'apparmor="DENIED"', 'profile="vk-parent//vk-target"', 'name="/run/secrets/token"')

    # -- live update -----------------------------------------------------------------
    # Three long-running processes, started under v1 and never exec'ing again: a vprobe
    # server in the profile, a busybox shell in the profile (opens with builtins), and
    # a vprobe server in the profile's child (entered by exec of /usr/bin/vk-lu-target).
    c = b.case("live-update")
    c.sh("echo secret > /tmp/lu-secret && cp /vprobe /usr/bin/vk-lu-target")

    def live(parent: str = "", child: str | None = "") -> str:
        kid = (
            ""
            if child is None
            else (
                "  /usr/bin/vk-lu-target cx -> lu-child,\n"
                f"  profile lu-child flags=(attach_disconnected) {{\n{ALLOW_ALL}{child}  }}\n"
            )
        )
        return profile("vk-live", parent + kid)

    deny = "  audit deny /tmp/lu-secret r,\n"
    v1 = live()
    v2 = live(deny + "  audit deny network packet,\n", deny)
    v4 = live(deny, None)
    c.load_bin("load-v1", "v1.bin", v1)
    vp, sh, kid = (3, 4), (5, 6), (7, 8)
    c.srv_start(vp, "/vprobe", "-p", "vk-live", "serve")
    loop = c.add_file("loop.sh", LOOP_SH)
    c.srv_start(sh, "/bin/sh", "-c", f'echo "exec vk-live" > /proc/self/attr/exec && exec /bin/sh {loop}')
    c.srv_start(kid, "/vprobe", "-p", "vk-live", "-t", "/usr/bin/vk-lu-target", "serve")
    c.srv_label("v1-label", "vk-live (enforce)", vp)
    c.srv_label("v1-child-label", "vk-live//lu-child (enforce)", kid)
    c.srv("v1-read", "ALLOW", vp, "read /tmp/lu-secret")
    c.srv("v1-packet", "ALLOW", vp, "socket packet raw")
    c.srv("v1-keep-fd", "ALLOW", vp, "open /tmp/lu-secret")
    c.srv("v1-keep-socket", "ALLOW", vp, "keepsock packet raw")
    c.srv("v1-shell-read", "ALLOW", sh, "read")
    c.srv("v1-child-read", "ALLOW", kid, "read /tmp/lu-secret")
    # Replace in place with the guest's parser, as the agent does on a node.
    c.load_text("replace-v2", "v2.profile", v2)
    c.srv("v2-read", "DENY", vp, "read /tmp/lu-secret")
    c.srv("v2-packet", "DENY", vp, "socket packet raw")
    # An fd opened under v1 stays readable (observed): AppArmor caches the permissions a
    # file was opened with and does not revalidate them for a replaced profile of the same
    # name. Replacement does not revoke already-open files; new opens are denied.
    c.srv("v2-kept-fd-not-revoked", "ALLOW", vp, "readfd")
    # Sockets are different: every socket operation is checked against the current
    # profile's network rules, so a kept packet socket stops working.
    c.srv("v2-kept-socket-revoked", "DENY", vp, "sockopt")
    c.srv("v2-shell-read", "DENY", sh, "read")
    c.srv("v2-child-read", "DENY", kid, "read /tmp/lu-secret")
    c.srv("v2-child-packet-allowed", "ALLOW", kid, "socket packet raw")
    c.expect("v2-new-exec", "DENY", "read /tmp/lu-secret", profile="vk-live")
    c.expect_audit(
        "v2-record-running", 'apparmor="DENIED"', 'profile="vk-live"', 'name="/tmp/lu-secret"', 'comm="vprobe"'
    )
    c.expect_audit("v2-record-shell", 'apparmor="DENIED"', 'profile="vk-live"', 'name="/tmp/lu-secret"', 'comm="sh"')
    c.expect_audit("v2-record-child", 'apparmor="DENIED"', 'profile="vk-live//lu-child"', 'name="/tmp/lu-secret"')
    # Relaxing works the same way.
    c.load_bin("replace-v3", "v3.bin", v1)
    c.srv("v3-read", "ALLOW", vp, "read /tmp/lu-secret")
    c.srv("v3-kept-fd", "ALLOW", vp, "readfd")
    c.srv("v3-kept-socket", "ALLOW", vp, "sockopt")
    c.srv("v3-shell-read", "ALLOW", sh, "read")
    c.srv("v3-child-read", "ALLOW", kid, "read /tmp/lu-secret")
    # A replacement without the child does not unload it: the kernel moves the old
    # children under the new parent, so the process stays in the last version of the
    # child (here v3's, which allows the read), and the child stays listed.
    c.load_bin("replace-v4", "v4.bin", v4)
    c.srv("v4-read", "DENY", vp, "read /tmp/lu-secret")
    c.srv_label("v4-dropped-child-label", "vk-live//lu-child (enforce)", kid)
    c.srv("v4-dropped-child-keeps-old-rules", "ALLOW", kid, "read /tmp/lu-secret")
    c.run("v4-dropped-child-still-loaded", "grep -q '^vk-live//lu-child ' /sys/kernel/security/apparmor/profiles")
    # Removing the profile unconfines the processes still in it.
    c.run("unload", "echo -n vk-live > /sys/kernel/security/apparmor/.remove")
    c.srv_label("removed-label", "unconfined", vp)
    c.srv_label("removed-child-label", "unconfined", kid)
    c.srv("removed-read", "ALLOW", vp, "read /tmp/lu-secret")
    c.srv("removed-shell-read", "ALLOW", sh, "read")
    c.srv_stop(vp)
    c.srv_stop(sh)
    c.srv_stop(kid)
    c.expect("removed-new-exec", "ERROR", "current", profile="vk-live")
    return b


#: A confined busybox shell that answers each line by reading /tmp/lu-secret with a
#: builtin redirection: the open is done by this long-running shell, never by an exec.
LOOP_SH = r"""while IFS= read -r cmd; do
  [ "$cmd" = quit ] && exit 0
  IFS= read -r label < /proc/self/attr/current
  echo "LABEL $label"
  if { IFS= read -r x < /tmp/lu-secret; } 2>/dev/null; then
    echo "RESULT ALLOW (shell builtin read)"
  else
    echo "RESULT DENY errno=13 (shell builtin read failed)"
  fi
done
"""

BATCH = build()


@pytest.fixture(scope="module")
def harness(kernel_boot: Callable[[aavm.Batch], aavm.BootResult]) -> aavm.BootResult:
    return kernel_boot(BATCH)


def test_boot_completed(harness: aavm.BootResult) -> None:
    """The guest ran every case and powered off by itself, and no audit record was lost."""
    assert harness.done, harness.failure_context()
    assert "LOST 0" in harness.results_raw, harness.failure_context()


@pytest.mark.parametrize("check_id", BATCH.check_ids())
def test_check(harness: aavm.BootResult, check_id: str) -> None:
    aavm.assert_check(harness, check_id)
