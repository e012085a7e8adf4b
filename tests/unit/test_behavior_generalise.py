"""Generalisation of recorded paths, the model's size bound, and the runtime's processes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from varmor.behavior.generalise import (
    collapse,
    generalise,
    generalise_behavior,
    generalise_ids,
    generalise_numbered,
    generalise_path,
    generalise_pids,
    generalise_temp,
    is_literal_path,
    is_runtime_process,
)
from varmor.behavior.model import Behavior, CapabilityRule, ExecRule, FileRule, MountRule, SignalRule
from varmor.behavior.profile import check_path, check_rule

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CONTAINER_ID = "3f7c1b2a9d8e4f6071a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70"


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/proc/158/attr/current", "/proc/@{pid}/attr/current"),
        ("/proc/158", "/proc/@{pid}"),
        ("/proc/158/task/160/stat", "/proc/@{pid}/task/@{tid}/stat"),
        ("/proc/self/task/160/comm", "/proc/self/task/@{tid}/comm"),
        ("/proc/self/status", "/proc/self/status"),
        ("/proc/thread-self/attr/current", "/proc/thread-self/attr/current"),
        ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/pid_max"),
        ("/proc/12a/stat", "/proc/12a/stat"),
        ("/data/proc/158", "/data/proc/158"),
    ],
)
def test_generalise_pids(path: str, want: str) -> None:
    assert generalise_pids(path) == want


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/dev/pts/0", "/dev/pts/[0-9]*"),
        ("/dev/pts/17", "/dev/pts/[0-9]*"),
        ("/dev/pts/ptmx", "/dev/pts/ptmx"),
        ("/proc/@{pid}/fd/3", "/proc/@{pid}/fd/[0-9]*"),
        ("/proc/self/fdinfo/12", "/proc/self/fdinfo/[0-9]*"),
        ("/proc/@{pid}/task/@{tid}/fd/4", "/proc/@{pid}/task/@{tid}/fd/[0-9]*"),
        ("/proc/@{pid}/fd/", "/proc/@{pid}/fd/"),
        ("/data/fd/3", "/data/fd/3"),
        ("/dev/tty1", "/dev/tty1"),
    ],
)
def test_generalise_numbered(path: str, want: str) -> None:
    assert generalise_numbered(path) == want


@pytest.mark.parametrize(
    ("path", "want"),
    [
        (f"/var/lib/kubelet/pods/{UUID}/volumes/x", "/var/lib/kubelet/pods/*/volumes/x"),
        (f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{CONTAINER_ID}/rootfs", None),
        ("/root/.cache/go-build/ab/ab12cd34ef56ab78cd90ef12ab34cd56-d", "/root/.cache/go-build/ab/*-d"),
        (f"/x/{UUID.upper()}.json", "/x/*.json"),
        ("/x/0123456789abcdef", "/x/*"),
        ("/x/0123456789abcde", "/x/0123456789abcde"),  # 15: too short
        ("/x/abcdefabcdefabcdef", "/x/abcdefabcdefabcdef"),  # no digit: a word, not an ID
        ("/x/g0123456789abcdef", "/x/g0123456789abcdef"),  # part of a longer word
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
    ],
)
def test_generalise_ids(path: str, want: str | None) -> None:
    expected = want or "/run/containerd/io.containerd.runtime.v2.task/k8s.io/*/rootfs"
    assert generalise_ids(path) == expected


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/tmp/tmpk3j_9x1a", "/tmp/tmp*"),
        ("/tmp/tmpabcdefgh", "/tmp/tmp*"),  # Python's template even when no digit came up
        ("/tmp/tmpk3j_9x1a.json", "/tmp/tmp*.json"),
        ("/tmp/tmpk3j_9x1a/data.txt", "/tmp/tmp*/data.txt"),  # mkdtemp's directory
        ("/tmp/tmp.AbC123dEf4", "/tmp/tmp.*"),  # mktemp(1)
        ("/tmp/fooa8Bc2Z", "/tmp/foo*"),  # mkstemp's XXXXXX
        ("/tmp/build123456789", "/tmp/build*"),  # a decimal suffix
        ("/var/tmp/sess_Xy12Ab", "/var/tmp/sess_*"),
        ("/dev/shm/sem.mp-abc123", "/dev/shm/sem.mp-*"),
        ("/run/user/1000/pulse-Zq81kA/native", "/run/user/1000/pulse-*/native"),
        ("/tmp/pymp-7c8x_z1q/listener-x2k9aa", "/tmp/pymp-*/listener-*"),
        ("/tmp/hsperfdata_root", "/tmp/hsperfdata_root"),
        ("/tmp/.X11-unix/X0", "/tmp/.X11-unix/X0"),
        ("/tmp/supervisord.log", "/tmp/supervisord.log"),
        ("/tmp/python3.11", "/tmp/python3.11"),  # a version, not a number
        ("/tmp/vprobe-chown-112", "/tmp/vprobe-chown-[0-9]*"),  # a pid standing alone
        ("/tmp/app.12345", "/tmp/app.[0-9]*"),
        ("/tmp/x-7/data", "/tmp/x-[0-9]*/data"),
        ("/tmp/file1", "/tmp/file1"),  # part of a word
        ("/tmp/Makefile", "/tmp/Makefile"),
        ("/tmp/ConfigBackup", "/tmp/*"),
        ("/tmp/a/b/Mixed", "/tmp/a/b/Mixed"),  # 5 characters
        ("/tmp/", "/tmp/"),
        ("/usr/lib/libc.so.6", "/usr/lib/libc.so.6"),
        ("/usr/bin/python3.11", "/usr/bin/python3.11"),
        ("/etc/ld.so.cache", "/etc/ld.so.cache"),
        ("/opt/tmpk3j_9x1a", "/opt/tmpk3j_9x1a"),  # not a temporary directory
    ],
)
def test_generalise_temp(path: str, want: str) -> None:
    assert generalise_temp(path) == want


def test_generalise_path_runs_every_rule_and_never_writes_a_double_star() -> None:
    assert generalise_path("/proc/4242/fd/7") == "/proc/@{pid}/fd/[0-9]*"
    assert generalise_path("/proc/12/task/13/fd/4") == "/proc/@{pid}/task/@{tid}/fd/[0-9]*"
    assert generalise_path("/tmp/0123456789abcdef_Ab12cd") == "/tmp/*"  # `*` + `*`, squeezed
    assert generalise_path(f"/tmp/{UUID}-Ab12cd") == "/tmp/*-*"
    assert generalise_path("socket:[1234]") == "socket:[1234]"


@pytest.mark.parametrize(
    ("rule", "want"),
    [
        (FileRule("/proc/77/maps", "r", True), FileRule("/proc/@{pid}/maps", "r", True)),
        (ExecRule("/tmp/tmpk3j_9x1a"), ExecRule("/tmp/tmp*")),
        (
            MountRule("mount", "", f"/var/lib/kubelet/pods/{UUID}/v/", "/proc/9/x/", "rw,bind"),
            MountRule("mount", "", "/var/lib/kubelet/pods/*/v/", "/proc/@{pid}/x/", "rw,bind"),
        ),
        (MountRule("mount", "tmpfs", "tmpfs", "/run/x/"), MountRule("mount", "tmpfs", "tmpfs", "/run/x/")),
        (CapabilityRule("chown"), CapabilityRule("chown")),
        (SignalRule("send", "term", "@{profile_name}"), SignalRule("send", "term", "@{profile_name}")),
    ],
)
def test_generalise_rewrites_the_paths_of_every_rule_kind(rule: object, want: object) -> None:
    assert generalise(rule) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("char", [*"*?[]{}^\\,\"#' \t\n\x00", "é"])
def test_paths_with_glob_or_meta_characters_are_not_literal(char: str) -> None:
    """The choice for glob characters in recorded paths: refused, never escaped or
    replaced by `?` (which would match other names of the same length)."""
    assert not is_literal_path(f"/data/a{char}b")
    assert is_literal_path("/data/a-b_c.d+e:f~g%h=i@j")


def test_literal_paths_are_absolute_and_bounded() -> None:
    assert not is_literal_path("data/x")
    assert not is_literal_path("/" + "a" * 4096)
    assert is_literal_path("/" + "a" * 4095)


# A literal path from segments that exercise every rule.
_SEGMENT = st.one_of(
    st.text("abcXYZ019_.-+:~%=@", min_size=1, max_size=12),
    st.sampled_from(["proc", "task", "fd", "fdinfo", "pts", "dev", "tmp", "self", "1", "42", UUID, CONTAINER_ID]),
    st.from_regex(r"tmp[a-z0-9_]{8}|[a-z]{1,4}[A-Za-z0-9]{6}|[0-9a-f]{16,20}", fullmatch=True),
)
_LITERAL = st.lists(_SEGMENT, min_size=1, max_size=7).map(lambda parts: "/" + "/".join(parts)).filter(is_literal_path)
_ROOTED = st.tuples(st.sampled_from(["", "/tmp", "/proc", "/dev/shm", "/run/user/0"]), _LITERAL).map("".join)


@given(_ROOTED)
def test_generalise_path_is_idempotent(path: str) -> None:
    once = generalise_path(path)
    assert generalise_path(once) == once


@given(_ROOTED)
def test_generalise_never_writes_a_path_the_profile_writer_refuses(path: str) -> None:
    assert check_path(path) is None
    assert check_path(generalise_path(path)) is None
    assert check_rule(generalise(FileRule(path, "rw"))) is None


def leaves(directory: str, n: int, perms: str = "r", owner: bool = True) -> Behavior:
    behavior = Behavior()
    for i in range(n):
        behavior.add(FileRule(f"{directory}/f{i}", perms, owner), count=i + 1)
    return behavior


def test_collapse_bounds_a_directory_to_one_glob() -> None:
    behavior = leaves("/data", 33)
    behavior.add(FileRule("/data/f0", "w", owner=False))
    behavior.add(FileRule("/data/sub/", "r"))  # a directory: not a leaf
    behavior.add(FileRule("/etc/hosts", "r"))
    behavior.add(CapabilityRule("chown"))
    out = collapse(behavior)
    assert out.rules == {
        FileRule("/data/*", "rw", owner=False): sum(range(1, 34)) + 1,
        FileRule("/data/sub/", "r"): 1,
        FileRule("/etc/hosts", "r"): 1,
        CapabilityRule("chown"): 1,
    }
    assert out.records == behavior.records


def test_collapse_keeps_owner_when_every_rule_had_it_and_leaves_small_directories() -> None:
    assert collapse(leaves("/data", 33)).rules == {FileRule("/data/*", "r", owner=True): sum(range(1, 34))}
    small = leaves("/data", 32)
    assert collapse(small).rules == small.rules
    assert collapse(leaves("/data", 3, "wa"), max_siblings=2).rules == {FileRule("/data/*", "w", owner=True): 6}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a", "/a/b", "/c", ""]),
            st.text("xyz12", min_size=1, max_size=3),
            st.sampled_from(["r", "w", "a", "rm", "k"]),
            st.booleans(),
            st.integers(1, 5),
        ),
        max_size=60,
    ),
    st.integers(0, 6),
)
def test_collapse_never_loses_a_count(
    rules: list[tuple[str, str, str, bool, int]],
    max_siblings: int,
) -> None:
    behavior = Behavior(lost=3, excluded=4)
    for directory, leaf, perms, owner, count in rules:
        behavior.add(FileRule(f"{directory}/{leaf}", perms, owner), count)
    out = collapse(behavior, max_siblings)
    assert sum(out.rules.values()) == sum(behavior.rules.values())
    assert (out.records, out.lost, out.excluded) == (behavior.records, 3, 4)
    assert collapse(out, max_siblings).rules == out.rules
    by_dir: dict[str, set[str]] = {}
    for rule in out.rules:
        assert isinstance(rule, FileRule)
        by_dir.setdefault(rule.path.rsplit("/", 1)[0], set()).add(rule.path)
    assert all(len(paths) <= max(max_siblings, 1) for paths in by_dir.values())


def test_generalise_behavior_merges_rules_that_become_equal() -> None:
    behavior = Behavior()
    behavior.add(FileRule("/proc/1/stat", "r"), 2)
    behavior.add(FileRule("/proc/2/stat", "r"), 3)
    behavior.excluded = 5
    out = generalise_behavior(behavior)
    assert out.rules == {FileRule("/proc/@{pid}/stat", "r"): 5}
    assert (out.records, out.excluded) == (5, 5)


@pytest.mark.parametrize(
    ("comm", "exe"),
    [
        ("runc:[0:PARENT]", "/usr/bin/runc"),
        ("runc:[1:CHILD]", ""),
        ("runc:[2:INIT]", ""),
        ("runc", ""),
        ("crun", ""),
        ("youki", ""),
        ("conmon", ""),
        ("containerd-shim", ""),
        ("x", "/usr/bin/containerd-shim-runc-v2"),
        ("x", "/usr/sbin/runc"),
        ("x", "/usr/bin/crun (deleted)"),
        ("x", "/usr/libexec/podman/conmon"),
        ("x", "/memfd:runc_cloned:/proc/self/exe (deleted)"),
    ],
)
def test_runtime_processes(comm: str, exe: str) -> None:
    assert is_runtime_process(comm, exe)


@pytest.mark.parametrize(
    ("comm", "exe"),
    [
        ("nginx", "/usr/sbin/nginx"),
        ("runc:[3:OTHER]", "/usr/bin/app"),
        ("runcx", "/usr/bin/runcx"),
        ("sh", "/tmp/runc/sh"),
        ("python3", "/usr/bin/python3"),
    ],
)
def test_workload_processes(comm: str, exe: str) -> None:
    assert not is_runtime_process(comm, exe)
