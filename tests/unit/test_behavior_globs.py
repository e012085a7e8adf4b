"""AppArmor path globs: matching and intersection, against a port of the parser's own
translation (apparmor parser_regex.c `convert_aaregex_to_pcre`) run by Python's `re`,
and against brute force over a small alphabet."""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varmor.behavior.globs import DISK_DEVICES, GlobError, escape, intersects, matches, witness

# -- the reference: AppArmor's translation, character by character ---------------------------


@lru_cache(maxsize=4096)
def reference(glob: str) -> re.Pattern[str]:
    """The parser's glob -> PCRE translation (minus variables), as a Python regex."""
    glob = re.sub("/{2,}", "/", glob)
    out: list[str] = []
    escaped = in_class = False
    depth = 0
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "\\" and not escaped:
            escaped = True
            i += 1
            continue
        if in_class and (escaped or c != "]"):
            out.append("\\" + c if escaped or c in "[\\" else c)  # ranges stay ranges
        elif escaped:
            out.append(re.escape(c))
        elif c == "*":
            if out and out[-1] == "/":
                rest = i
                while rest < len(glob) and glob[rest] == "*":
                    rest += 1
                if rest == len(glob) or glob[rest] == "/":
                    out.append("[^/]")
            if glob[i + 1 : i + 2] == "*":
                out.append("[\\s\\S]*")
                i += 1
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            in_class = True
            out.append("[")
            if glob[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if glob[i + 1 : i + 2] == "]":  # a leading ] is a member
                out.append("\\]")
                i += 1
        elif c == "]":
            in_class = False
            out.append("]")
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}":
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append("/" if c == "/" else re.escape(c))
        escaped = False
        i += 1
    return re.compile("".join(out))


def ref_matches(path: str, glob: str) -> bool:
    return reference(glob).fullmatch(path) is not None


ALPHABET = "ab/c"  # c: any character no pattern names
# Every word up to 5 characters, less those with `//` (no path the kernel reports has one).
WORDS = [w for n in range(6) for w in map("".join, itertools.product(ALPHABET, repeat=n)) if "//" not in w]
TOKENS = ["a", "b", "/", "/", "*", "**", "?", "[ab]", "[^a]", "{a,b/}", "{,a}", "{a*,/b}", "\\*"]
globs = st.lists(st.sampled_from(TOKENS), max_size=6).map("".join)


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(globs)
def test_matching_agrees_with_apparmors_translation(glob: str) -> None:
    for word in WORDS:
        assert matches(word, glob) == ref_matches(word, glob), (word, glob)


@settings(max_examples=300, deadline=None)
@given(globs, globs)
def test_intersection_is_exact_and_symmetric(a: str, b: str) -> None:
    """A witness is named by both (checked by the reference); no witness means no word of
    the brute-force set is named by both; and the answer does not depend on the order."""
    found = witness(a, b)
    assert intersects(a, b) == intersects(b, a) == (found is not None)
    if found is not None:
        assert ref_matches(found, a), (found, a, b)
        assert ref_matches(found, b), (found, a, b)
    else:
        assert not any(ref_matches(w, a) and ref_matches(w, b) for w in WORDS), (a, b)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(WORDS), globs)
def test_a_path_matches_a_glob_iff_its_literal_pattern_intersects_it(path: str, glob: str) -> None:
    assert matches(path, glob) == intersects(escape(path), glob)
    assert matches(path, escape(path))


# -- the catalog's cases, precisely ---------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "recorded", "meet"),
    [
        ("/etc/**", "/etc/nginx/nginx.conf", True),
        ("/etc/**", "/etc/", False),  # a whole-segment ** matches at least one character
        ("/etc/**", "/etcetera/x", False),
        ("/**/sh", "/bin/sh", True),
        ("/**/sh", "/sh", False),
        ("/**/sh", "/bin/bash", False),
        ("/**/bash", "/usr/bin/bash", True),
        ("/proc/**/mounts", "/proc/@{pid}/mounts", True),
        ("/proc/**/mounts", "/proc/mounts", False),
        ("/proc/**/mountinfo", "/proc/@{pid}/task/@{tid}/mountinfo", True),
        ("/proc/**/net/arp", "/proc/@{pid}/net/dev", False),
        ("/proc/partitions", "/proc/@{pid}/partitions", False),
        ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/*", True),
        ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/core_uses_pid", False),
        ("/sys/fs/cgroup/**/release_agent", "/sys/fs/cgroup/release_agent", False),
        ("/sys/fs/cgroup/**/release_agent", "/sys/fs/cgroup/rdma/release_agent", True),
        ("/run/secrets/kubernetes.io/serviceaccount/**", "/run/secrets/kubernetes.io/serviceaccount/token", True),
        ("/var/run/secrets/kubernetes.io/serviceaccount/**", "/run/secrets/kubernetes.io/serviceaccount/token", False),
        ("/**/.ssh/**", "/root/.ssh/id_ed25519", True),
        ("/**/.ssh/**", "/root/.sshd/x", False),
        ("/**/containerd.sock", "/run/containerd/containerd.sock", True),
        ("/**/devices/**/tasks", "/sys/fs/cgroup/devices/kubepods/tasks", True),
        ("/**/devices/**/tasks", "/sys/fs/cgroup/devices/tasks", False),
        ("/**/runc", "/usr/bin/runc", True),
        ("/**/runc", "/usr/bin/runc.amd64", False),
        ("/tmp/a*", "/tmp/*b", True),  # neither contains the other
        ("/tmp/a*", "/tmp/b*", False),
        ("/proc**", "/proc", True),
        ("/sys**", "/sysfs", True),
        ("/{,usr/}lib/**", "/lib/x", True),
        ("/usr/lib/[a-c]*", "/usr/lib/d*", False),
        ("/usr/lib/[^a-c]*", "/usr/lib/d*", True),
    ],
)
def test_catalog_paths(rule: str, recorded: str, meet: bool) -> None:
    assert intersects(rule, recorded) is meet
    assert intersects(recorded, rule) is meet


@pytest.mark.parametrize(
    ("recorded", "meet"),
    [
        ("/dev/sda", True),
        ("/dev/nvme0n1p1", True),
        ("/dev/mapper/root", True),
        ("/dev/**", True),
        ("/dev/[nz]*", True),  # /dev/nvme0n1 is in there
        ("/dev/null", False),
        ("/dev/{null,zero,urandom}", False),
        ("/dev/pts/@{pid}", False),
        ("/dev/shm/**", False),
        ("/dev/shm", False),
        ("/dev/termination-log", False),
        ("/dev/", False),
        ("/proc/partitions", False),
    ],
)
def test_disk_devices_are_any_device_but_those_every_container_has(recorded: str, meet: bool) -> None:
    """The variable is set per node from /proc/partitions: any device name may be in it,
    but never /dev/null, /dev/pts/... (the runtime's own devices, not host disks)."""
    assert intersects(DISK_DEVICES, recorded) is meet
    assert intersects(recorded, DISK_DEVICES) is meet


def test_pid_and_tid_are_digits() -> None:
    assert matches("/proc/123/task/4/stat", "/proc/@{pid}/task/@{tid}/stat")
    assert not matches("/proc/self/stat", "/proc/@{pid}/stat")
    assert not matches("/proc//stat", "/proc/@{pid}/stat")
    assert intersects("/proc/@{pid}/stat", "/proc/[0-9]*/stat")
    assert not intersects("/proc/@{pid}/stat", "/proc/[a-z]*/stat")


def test_an_unknown_variable_may_be_anything() -> None:
    assert intersects("@{PROC}/*", "/proc/x")
    assert intersects("/home/@{user}/x", "/home/a/b/x")


@pytest.mark.parametrize("bad", ["/tmp/[ab", "/tmp/{a,b", "/tmp/a]", "/tmp/a}", "/tmp/a\\"])
def test_patterns_apparmor_refuses(bad: str) -> None:
    """Raised when the pattern could meet the other (literal ends that differ settle it first)."""
    with pytest.raises(GlobError):
        intersects(bad, "/**")


def test_escape_makes_a_literal() -> None:
    odd = "/tmp/a*b?[c]{d,e}@{pid}\\"
    assert matches(odd, escape(odd))
    assert not matches("/tmp/aXb?[c]{d,e}@{pid}\\", escape(odd))
