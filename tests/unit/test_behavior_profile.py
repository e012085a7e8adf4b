"""A behaviour model -> profile lines: the grammar every rule must pass (a model may be
hostile), the lines and their order, and the real apparmor_parser compiling them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import assert_compiles
from varmor.behavior.generalise import collapse, generalise_behavior
from varmor.behavior.model import (
    Behavior,
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
    SignalRule,
    from_wire,
)
from varmor.behavior.observe import observe
from varmor.behavior.profile import (
    FAMILIES,
    MOUNT_FLAGS,
    SIGNAL_NAMES,
    check_rule,
    model_profile_body,
    model_rules,
    refused_rules,
)
from varmor.nodeexec.audit import parse_line
from varmor.profile.builder import BASE_FLAGS, HEADER, INDENT
from varmor.profile.deny_default import BASELINE
from varmor.profile.raw_words import CAPS, SOCKET_TYPES

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"
OWN = "@{profile_name}"


def profile_text(body: list[str], name: str = "varmor-ns-web") -> str:
    """A whole profile around `body`, with the builder's header and flags (the abi and
    tunables lines as the builder writes them: @{pid} and @{tid} come from tunables)."""
    inner = [f"{INDENT}{line}" if line else "" for line in body]
    head = [HEADER, "abi <abi/3.0>,", "#include <tunables/global>", ""]
    return "\n".join([*head, f"profile {name} flags=({','.join(BASE_FLAGS)}) {{", *inner, "}"]) + "\n"


def behavior(*rules: BehaviorRule) -> Behavior:
    model = Behavior()
    for rule in rules:
        model.add(rule)
    return model


def test_lines_come_in_a_fixed_order_each_once() -> None:
    model = behavior(
        MountRule("umount", mountpoint="/mnt/x/"),
        PtraceRule("read", OWN),
        SignalRule("send", "term", OWN),
        NetworkRule("inet", "stream", "6"),
        NetworkRule("inet", "stream", "0"),  # the protocol is not enforced: one line
        CapabilityRule("chown"),
        FileRule("/etc/hosts", "r"),
        FileRule("/tmp/tmp*", "rw", owner=True),
        ExecRule("/bin/sh"),
    )
    assert model_rules(model) == [
        "/bin/sh ix,",
        "/bin/sh mr,",
        "/etc/hosts r,",
        "owner /tmp/tmp* rw,",
        "capability chown,",
        "network inet stream,",
        f"signal (send) set=(term) peer={OWN},",
        f"ptrace (read) peer={OWN},",
        "umount /mnt/x/,",
    ]


@pytest.mark.parametrize(
    ("rule", "line"),
    [
        (
            MountRule("mount", "tmpfs", "tmpfs", "/run/x/", "rw,nosuid"),
            "mount fstype=tmpfs options=(rw,nosuid) tmpfs -> /run/x/,",
        ),
        (MountRule("mount", "", "/a/", "/b/", "rw,bind"), "mount options=(rw,bind) /a/ -> /b/,"),
        (MountRule("mount", mountpoint="/", flags="rw,rprivate"), "mount options=(rw,rprivate) -> /,"),
        (MountRule("remount", mountpoint="/", flags="ro"), "remount options=(ro) /,"),
        (MountRule("remount", mountpoint="/x/"), "remount /x/,"),
        (MountRule("pivot_root", source="/new/old/", mountpoint="/new/"), "pivot_root oldroot=/new/old/ /new/,"),
        (NetworkRule("unix"), "network unix,"),
        (FileRule("/proc/@{pid}/fd/[0-9]*", "r"), "/proc/@{pid}/fd/[0-9]* r,"),
        (FileRule("/app/node_modules/@babel/x=y.js", "r"), "/app/node_modules/@babel/x=y.js r,"),
    ],
)
def test_rule_lines(rule: BehaviorRule, line: str) -> None:
    assert check_rule(rule) is None
    assert model_rules(behavior(rule)) == [line]


@pytest.mark.parametrize(
    "rule",
    [
        # syntax a model could smuggle into the profile
        FileRule("/a r,\n}\nprofile x {\n/** rwlkm", "r"),
        FileRule("/a, /**", "r"),
        FileRule("/a #include <x>", "r"),
        FileRule('/a" "/b', "r"),
        FileRule("/a\\,b", "r"),
        FileRule("/a/{,**}", "r"),
        FileRule("/a/@{HOME}", "r"),
        FileRule("/a/@{pid", "r"),
        FileRule("/a/[^a]", "r"),
        FileRule("/a/[a-z]", "r"),
        FileRule("/a/[0-9", "r"),
        FileRule("/**", "rw"),
        FileRule("/a/**/b", "r"),
        FileRule("relative", "r"),
        FileRule("@{pid}/x", "r"),
        FileRule("/a b", "r"),
        FileRule("/é", "r"),
        FileRule("/" + "a" * 4096, "r"),
        # permissions
        FileRule("/a", ""),
        FileRule("/a", "rwx"),
        FileRule("/a", "ix"),
        FileRule("/a", "px"),
        FileRule("/a", "wr"),  # not canonical
        FileRule("/a", "wa"),
        FileRule("/a", "r -> x"),
        ExecRule("/a -> unconfined"),
        ExecRule("/bin/*,\n/** ux"),
        # words outside the pinned ABI or the parser
        CapabilityRule("all"),
        CapabilityRule("chown, capability sys_admin"),
        NetworkRule("inet,\nnetwork"),
        NetworkRule("tcp"),
        NetworkRule("inet", "dccp"),
        NetworkRule("inet", "stream", "tcp"),
        SignalRule("send", "lost", OWN),
        SignalRule("send", "term) peer=(x", OWN),
        SignalRule("kill", "term", OWN),
        SignalRule("send", "term", "varmor-ns-other"),
        SignalRule("send", "term", "*"),
        SignalRule("send", "term", "@{profile_name}//*"),
        SignalRule("send", "term", "a//&b"),
        SignalRule("send", "term", "/usr/bin/x"),
        SignalRule("send", "term", ""),
        PtraceRule("read", "unconfined"),  # only the profile's own processes
        PtraceRule("trace", "varmor-x"),
        PtraceRule("readwrite", OWN),
        MountRule("mount", "tmpfs", "tmpfs", "/x/", "rw,lazytime"),
        MountRule("mount", "tmpfs", "tmpfs", "/x/", "rw,rw"),
        MountRule("mount", "tmpfs", "tmpfs", "/x/", "rw,,nosuid"),
        MountRule("mount", "tmp fs", "tmpfs", "/x/"),
        MountRule("mount", "tmpfs", "tmpfs -> /etc/", "/x/"),
        MountRule("mount", "tmpfs", "tmpfs", ""),
        MountRule("mount", "tmpfs", "tmpfs", "/x/ -> /y/"),
        MountRule("umount", "tmpfs", mountpoint="/x/"),
        MountRule("umount", source="/a/", mountpoint="/x/"),
        MountRule("remount", source="/a/", mountpoint="/x/"),
        MountRule("pivot_root", source="none", mountpoint="/x/"),
        MountRule("pivot_root", mountpoint="/x/", flags="ro"),
        MountRule("move", mountpoint="/x/"),
    ],
)
def test_refused_rules(rule: BehaviorRule) -> None:
    assert check_rule(rule) is not None
    assert model_rules(behavior(rule)) == []


def test_file_rules_on_one_path_share_a_line() -> None:
    model = behavior(
        FileRule("/data/x", "r"),
        FileRule("/data/x", "a"),
        FileRule("/data/x", "w"),
        FileRule("/data/x", "k", owner=True),
        FileRule("/data/x", "rwx"),  # refused: its permissions are not merged in
    )
    assert model_rules(model) == ["/data/x rw,", "owner /data/x k,"]


def test_a_hostile_wire_model_keeps_only_its_valid_rules() -> None:
    model = from_wire(
        {
            "files": [
                {"path": "/etc/hosts", "permissions": "r", "count": 3},
                {"path": "/a r,\n  /** rwlkm", "permissions": "r"},
                {"path": "/**", "permissions": "rw"},
            ],
            "capabilities": [{"name": "sys_admin"}, {"name": "everything"}],
            "ptraces": [{"access": "trace", "peer": "unconfined"}],
        }
    )
    assert model_rules(model) == ["/etc/hosts r,", "capability sys_admin,"]
    assert [rule for rule, _ in refused_rules(model)] == [
        FileRule("/**", "rw"),
        FileRule("/a r,\n  /** rwlkm", "r"),
        CapabilityRule("everything"),
        PtraceRule("trace", "unconfined"),
    ]


def test_the_baseline_is_the_modelling_base_and_the_runtimes_stop_signals() -> None:
    body = model_profile_body(Behavior())
    assert BASELINE[0] == "#include <abstractions/base>"
    assert {"signal (receive) peer=unconfined,", "signal (receive) peer=runc,"} <= set(BASELINE)
    assert [line for line in body if line and not line.startswith("# ")] == list(BASELINE)


def recorded_model() -> Behavior:
    """Every record the harness recorded, observed and generalised: a real model."""
    model = Behavior()
    for path in sorted(DATA.glob("*.log")):
        for line in path.read_text().splitlines():
            rec = parse_line(line)
            rule = rec and observe(rec.operation, rec.klass, rec.fields, rec.profile)
            if rule:
                model.add(rule)
    return collapse(generalise_behavior(model))


EVERY_KIND = (
    ExecRule("/tmp/tmp*"),
    FileRule("/proc/@{pid}/task/@{tid}/fd/[0-9]*", "r", owner=True),
    FileRule("/dev/pts/[0-9]*", "rw"),
    FileRule("/var/lib/kubelet/pods/*/volumes/x", "rwlk"),
    FileRule("/data/log", "a"),
    FileRule("/data/lib.so", "rm"),
    FileRule("/app/node_modules/@scope/a=b", "r"),
    FileRule("/proc/@{profile_name}", "r"),
    FileRule("/data/?", "w"),
    NetworkRule("unix", "stream", "0"),
    NetworkRule("netlink", "raw", "9"),
    NetworkRule("inet6"),
    SignalRule("receive", "rtmin+32", "unconfined"),
    SignalRule("send", "exists", OWN),
    PtraceRule("readby", OWN),
    PtraceRule("tracedby", OWN),
    MountRule("mount", "tmpfs", "tmpfs", "/run/x/", "rw,nosuid,nodev"),
    MountRule("mount", "", "/a/", "/b/", "rw,rbind"),
    MountRule("mount", mountpoint="/", flags="rw,rslave"),
    MountRule("remount", mountpoint="/", flags="ro,nosuid"),
    MountRule("umount", mountpoint="/run/x/"),
    MountRule("pivot_root", source="/new/old/", mountpoint="/new/"),
    MountRule("pivot_root", mountpoint="/new/"),
)


def test_models_compile_with_the_real_parser() -> None:
    real = recorded_model()
    assert len(real) > 10
    every = behavior(*EVERY_KIND)
    assert refused_rules(every) == []
    words = behavior(
        *(CapabilityRule(c) for c in CAPS),
        *(SignalRule("send", s, OWN) for s in SIGNAL_NAMES),
        *(NetworkRule(f, t) for f in FAMILIES for t in SOCKET_TYPES),
        *(MountRule("mount", mountpoint="/x/", flags=f) for f in MOUNT_FLAGS),
    )
    assert refused_rules(words) == []
    assert_compiles(
        {
            "recorded": profile_text(model_profile_body(real)),
            "every kind": profile_text(model_profile_body(every)),
            "every word": profile_text(model_profile_body(words)),
            "empty": profile_text(model_profile_body(Behavior())),
        }
    )


_PATHS = st.lists(
    st.one_of(
        st.text("abcXY09_.-+:~%=@*?", min_size=1, max_size=8),
        st.sampled_from(["*", "x*", "*.so", "?", "@{pid}", "@{tid}", "[0-9]*", OWN]),
    ),
    min_size=1,
    max_size=5,
).map(lambda parts: "/" + "/".join(parts))
_RULES = st.one_of(
    st.builds(FileRule, _PATHS, st.sampled_from(["r", "rw", "a", "rwlk", "rm", "k", "l"]), st.booleans()),
    st.builds(ExecRule, _PATHS),
    st.builds(CapabilityRule, st.sampled_from(sorted(CAPS))),
    st.builds(NetworkRule, st.sampled_from(sorted(FAMILIES)), st.sampled_from(["", *sorted(SOCKET_TYPES)])),
    st.builds(SignalRule, st.sampled_from(["send", "receive"]), st.sampled_from(sorted(SIGNAL_NAMES)), st.just(OWN)),
    st.builds(MountRule, st.just("umount"), mountpoint=_PATHS),
    st.builds(
        MountRule,
        st.just("mount"),
        st.sampled_from(["", "tmpfs", "fuse.sshfs"]),
        st.one_of(_PATHS, st.sampled_from(["", "none", "tmpfs", "/dev/sda1"])),
        _PATHS,
        st.sampled_from(["", "rw,bind", "ro,nosuid,nodev,noexec", "rw,rprivate"]),
    ),
    st.builds(MountRule, st.just("pivot_root"), source=st.one_of(st.just(""), _PATHS), mountpoint=_PATHS),
    st.builds(MountRule, st.just("remount"), mountpoint=_PATHS, flags=st.sampled_from(["", "ro", "rw,nosuid"])),
)


@settings(max_examples=15, deadline=None)
@given(st.lists(_RULES, min_size=1, max_size=40))
def test_whatever_check_rule_accepts_compiles(rules: list[BehaviorRule]) -> None:
    model = behavior(*(r for r in rules if check_rule(r) is None))
    assert_compiles({"model": profile_text(model_profile_body(model))})
