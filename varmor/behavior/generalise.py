"""Generalisation: rewrite the per-process, per-boot and random parts of recorded paths
into AppArmor globs, so a model converges on what a workload does instead of growing
with every pid, terminal, container ID and temporary file it touches.

Glob characters in recorded paths. A workload names its own files, so a file literally
named `*`, `[a-z]` or `{,**}` would, pasted into a rule, widen the model to files it
never touched. AppArmor's own escaping (`\\*`) is not something the raw-rule validator
admits, and a `?` per offending character still matches more than was recorded. So the
choice here is to refuse: a recorded path with any character outside LITERAL_CHARS
(glob and meta characters, quotes, commas, whitespace, control and non-ASCII
characters) is no rule at all (`is_literal_path`; `observe` returns None and the agent
counts the record as not modelled). Under the enforced profile that file is then
denied, which fails closed. Every `*`, `?`, `[0-9]` and `@{...}` in a model is
therefore one this module wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from varmor.behavior.model import (
    Behavior,
    BehaviorRule,
    ExecRule,
    FileRule,
    MountRule,
    canonical_perms,
)

MAX_PATH = 4096  # the kernel's PATH_MAX: a longer name is not one it logs
# Characters a recorded path may hold: none of them is AppArmor syntax in a path.
LITERAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-:~%=@/")
PID = "@{pid}"
TID = "@{tid}"
NUMBERED = "[0-9]*"
_DIGITS = re.compile(r"[0-9]+")
# A UUID, or a run of 16+ hex characters with a digit in it (container IDs, digests,
# pod UIDs), standing alone between non-alphanumerics.
_UUID = re.compile(r"(?<![A-Za-z0-9])[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![A-Za-z0-9])")
_HEX_RUN = re.compile(r"(?<![A-Za-z0-9])(?=[a-fA-F]*[0-9])[0-9a-fA-F]{16,}(?![A-Za-z0-9])")
_TEMP_ROOT = re.compile(r"^(?:/tmp|/var/tmp|/dev/shm|/run/user/[0-9]+)/")
_WORD_RUN = re.compile(r"[A-Za-z0-9_]{6,}")
_PYTHON_TEMP = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile's "tmp" + 8 random characters
_WORD_THEN_DIGITS = re.compile(r"([a-z][a-z_]*)[0-9]{6,}")  # Go's and Java's decimal suffixes
_WORD_THEN_SIX = re.compile(r"([a-z][a-z_]*)([A-Za-z0-9]{6})")  # mkstemp's XXXXXX
_STARS = re.compile(r"\*{2,}")
_DIGIT_LETTER = re.compile(r"[0-9][A-Za-z]")
_RUNTIME_COMMS = re.compile(r"runc(?::\[[0-2]:(?:PARENT|CHILD|INIT)\])?|crun|youki|conmon|containerd-shim.*")
_RUNTIME_EXES = frozenset({"runc", "crun", "youki", "conmon"})


def is_literal_path(path: str) -> bool:
    """Whether a recorded path can be written into a rule as it is: absolute, no longer
    than PATH_MAX, and only LITERAL_CHARS, so it matches itself and nothing else (see
    the module docstring for why anything else is refused, not escaped)."""
    return path.startswith("/") and len(path) <= MAX_PATH and all(ch in LITERAL_CHARS for ch in path)


def generalise_pids(path: str) -> str:
    """`/proc/<pid>/...` -> `/proc/@{pid}/...` and `.../task/<tid>/` -> `.../task/@{tid}/`:
    pids differ per run; `/proc/self` and `/proc/thread-self` are already stable."""
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "proc":
        return path
    if _DIGITS.fullmatch(parts[2]):
        parts[2] = PID
    if len(parts) > 4 and parts[2] in (PID, "self") and parts[3] == "task" and _DIGITS.fullmatch(parts[4]):
        parts[4] = TID
    return "/".join(parts)


def _fd_index(parts: list[str]) -> int | None:
    """Where the fd number is in `/proc/(@{pid}|self)/[task/@{tid}/](fd|fdinfo)/<n>`."""
    if len(parts) < 5 or parts[1] != "proc" or parts[2] not in (PID, "self"):
        return None
    at = 5 if parts[3] == "task" and len(parts) > 5 and parts[4] == TID else 3
    return at + 1 if len(parts) == at + 2 and parts[at] in ("fd", "fdinfo") else None


def generalise_numbered(path: str) -> str:
    """Terminals and file descriptors: `/dev/pts/<n>` and `/proc/@{pid}/fd/<n>` ->
    `[0-9]*`: which number a process gets depends on what else is open."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1:3] == ["dev", "pts"] and _DIGITS.fullmatch(parts[3]):
        parts[3] = NUMBERED
    index = _fd_index(parts)
    if index is not None and _DIGITS.fullmatch(parts[index]):
        parts[index] = NUMBERED
    return "/".join(parts)


def generalise_ids(path: str) -> str:
    """UUIDs and hex runs of 16+ characters -> `*` within their segment: container IDs,
    content digests and pod UIDs (/var/lib/kubelet/pods/<uid>/) change per pod."""
    if "/" not in path:
        return path
    return _HEX_RUN.sub("*", _UUID.sub("*", path))


# A number standing alone (not in a word, and not a version's part: `python3.11` stays).
_LONE_NUMBER = re.compile(r"(?<![A-Za-z0-9_*\[\]])(?<![0-9]\.)[0-9]+(?![A-Za-z0-9_*\[\]])(?!\.[0-9])")


def _random(text: str) -> bool:
    """Looks generated: two digits, a digit before a letter, or upper case after the
    first character mixed with lower case. Stricter than "has a digit or mixes case" so
    a version (`python3`) or a capitalised word (`Makefile`) stays a name."""
    upper_inside = any(c.isupper() for c in text[1:]) and any(c.islower() for c in text)
    return sum(c.isdigit() for c in text) >= 2 or bool(_DIGIT_LETTER.search(text)) or upper_inside


def _glob_run(run: str) -> str:
    """One run of 6+ word characters in a temporary name, with its random part globbed.
    A known template shape keeps its fixed prefix (Python's `tmp` + 8, a word + decimal
    digits, a word + mkstemp's 6); otherwise a random-looking run is globbed whole, which
    converges where guessing a prefix would not."""
    if _PYTHON_TEMP.fullmatch(run):
        return "tmp*"
    for shape in (_WORD_THEN_DIGITS, _WORD_THEN_SIX):
        match = shape.fullmatch(run)
        if match and _random(run[match.end(1) :]):
            return match[1] + "*"
    return "*" if _random(run) else run


def generalise_temp(path: str) -> str:
    """Random temporary names in /tmp, /var/tmp, /dev/shm and /run/user/<uid>: in the
    final segment and in the one right below the temporary root (mkdtemp's directory),
    each run of 6+ [A-Za-z0-9_] that looks random is globbed (`/tmp/tmpk3j_9x1a` ->
    `/tmp/tmp*`, `/tmp/tmpk3j_9x1a.json` -> `/tmp/tmp*.json`). Ordinary names stay."""
    root = _TEMP_ROOT.match(path)
    if root is None:
        return path
    parts = path[root.end() :].split("/")
    last = len(parts) - 1 if parts[-1] or len(parts) == 1 else len(parts) - 2
    for i in {0, last}:
        parts[i] = _WORD_RUN.sub(lambda m: _glob_run(m[0]), parts[i])
        # A number standing alone in a temporary name is a pid or a counter (`x-112`,
        # `app.12345`): shorter than a random run, as distinct per process.
        parts[i] = _LONE_NUMBER.sub("[0-9]*", parts[i])
    return root[0] + "/".join(parts)


PATH_RULES: tuple[Callable[[str], str], ...] = (generalise_pids, generalise_numbered, generalise_ids, generalise_temp)


def generalise_path(path: str) -> str:
    """Every path rule in turn; runs of `*` are squeezed to one, since `**` would match
    across directories. Not a path (`socket:[..]`, `pipe:[..]`, `anon_inode:..`): kept as
    is, and refused by the profile writer."""
    if not path.startswith("/"):
        return path
    for rule in PATH_RULES:
        path = rule(path)
    return _STARS.sub("*", path)


def generalise(rule: BehaviorRule) -> BehaviorRule:
    """The rule with its paths generalised; rules without paths are returned unchanged."""
    if isinstance(rule, FileRule):
        return FileRule(generalise_path(rule.path), rule.perms, rule.owner)
    if isinstance(rule, ExecRule):
        return ExecRule(generalise_path(rule.path))
    if isinstance(rule, MountRule):
        source = generalise_path(rule.source) if rule.source.startswith("/") else rule.source
        return MountRule(rule.operation, rule.fstype, source, generalise_path(rule.mountpoint), rule.flags)
    return rule


def generalise_behavior(behavior: Behavior) -> Behavior:
    """`generalise` over a whole model: rules that become equal are merged, counts summed."""
    out = Behavior(records=behavior.records, lost=behavior.lost, excluded=behavior.excluded)
    for rule, count in behavior.rules.items():
        new = generalise(rule)
        out.rules[new] = out.rules.get(new, 0) + count
    return out


def collapse(behavior: Behavior, max_siblings: int = 32) -> Behavior:
    """Bound the model's size: when one directory holds more than `max_siblings` distinct
    leaf file paths (directories, ending in `/`, are not leaves), its leaf file rules
    become one `dir/*` rule with the union of their permissions, `owner` only if every
    one was owner, and the sum of their counts. Totals are unchanged."""
    groups: dict[str, list[FileRule]] = {}
    for rule in behavior.rules:
        if isinstance(rule, FileRule) and not rule.path.endswith("/") and "/" in rule.path:
            groups.setdefault(rule.path.rsplit("/", 1)[0], []).append(rule)
    out = Behavior(dict(behavior.rules), behavior.records, behavior.lost, behavior.excluded)
    for directory, rules in sorted(groups.items()):
        if len({r.path for r in rules}) <= max_siblings:
            continue
        perms = canonical_perms("".join(r.perms for r in rules))
        merged = FileRule(f"{directory}/*", perms, all(r.owner for r in rules))
        total = sum(out.rules.pop(r) for r in rules)
        out.rules[merged] = out.rules.get(merged, 0) + total
    return out


def is_runtime_process(comm: str, exe: str) -> bool:
    """Whether a process is the container runtime's own (runc's stages, crun, youki,
    conmon, containerd's shims): its start-up work before the workload's exec is not the
    workload's behaviour. `exe` may carry the kernel's ` (deleted)` suffix, and runc may
    run from a sealed memfd copy of itself (`/memfd:runc_cloned:...`)."""
    if _RUNTIME_COMMS.fullmatch(comm):
        return True
    exe = exe.removesuffix(" (deleted)")
    name = exe.rsplit("/", 1)[-1]
    return name in _RUNTIME_EXES or name.startswith("containerd-shim") or exe.startswith("/memfd:runc_cloned:")
