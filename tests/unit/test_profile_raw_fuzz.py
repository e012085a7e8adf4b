"""The raw-rule grammar fuzzer: rules generated from the grammar plus mutations, and every
accepted set checked in the COMPILED policy, not only in its text.

Why: the escapes a security review found (`pivot_root /x ->unconfined,`, `->varmor-<ns>-<policy>`)
passed a text-level check and became transitions only in what apparmor_parser made of
them. So every accepted rule set that compiles is checked where the parser put it:

- alone in a profile of its own (`wrapper`), where the builder wrote no transition: no
  exec-transition table in the binary policy (`-S`, `xtable`: where px/cx and
  `pivot_root -> name` targets go), no rule whose exec mode is anything but inherit and
  no change_profile or pivot_root-transition bits (`-D rule-exprs`: ux and plain px have
  no table entry), no profile but the wrapper (`-N`), no preprocessed line (`-p`,
  includes expanded) but the rules;
- built the one way varmor builds it (`compile_policy`), once container-wide and once
  for an executable target (a child profile), against the same policy with the raw rules
  replaced by placeholders (same shape, same children): the same profile names, the same
  transition tables, and preprocessed text that differs only by the rules.

The generator is shared with `bench/fuzz_raw_rules.py` (the long run, and the comparison
with the previous validator, of commit 3d3e08f).
"""

from __future__ import annotations

import random
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import policy
from varmor.parser import features_file, find_parser, write_sample_include
from varmor.pipeline import compile_policy
from varmor.profile import RawRuleError, check_raw_rules

# -- the generator: the grammar of raw rules, then mutations ------------------------------

TARGETS = ["unconfined", "varmor-tenant-b-web", "varmor-fz-fz//child_0", "&unconfined", ":ns:other", "/bin/sh"]
PATHS = ["/etc/x", "/bin/sh", "@{PROC}/sys/**", "/tmp/**", '"/a b"', "/usr/bin/[^k]*", "/x", "@{HOME}/.ssh/"]
PERMS = ["r", "w", "rw", "ix", "rix", "x", "m", "lk", "px", "Px", "cx", "Cx", "ux", "Ux", "pix", "Pux", "cix", "PX"]
CAPS = ["sys_admin", "net_raw", "chown", "mac_admin", "bogus"]
NET = ["inet", "inet6", "unix", "packet", "stream", "dgram", "raw", "tcp"]
PEERS = ["unconfined", "varmor-tenant-b-web", "@{profile_name}", "*", "u*", "varmor-*", "/usr/bin/x"]
MOUNT_CONDS = ["fstype=proc", "fstype=(tmpfs, proc)", "options=(ro,bind)", "options in (bind,rbind)", "options=rw"]
EVIL = [
    "->",
    "-> ",
    " ->",
    "->unconfined",
    " -> unconfined",
    "->varmor-tenant-b-web",
    "px",
    "ux",
    "cx -> c",
    "}",
    "{",
    "#include <abstractions/base>",
    "include",
    "profile evil",
    "hat h",
    "^h",
    "@{X}=/",
    "change_profile",
    "change_profile -> unconfined",
    "change_hat",
    "\\",
    "$b",
    '"',
    "(",
    ")",
    ",",
    "\n}",
    "\u202e",
    "\u200b",
    "\u00a0",
    "\x00",
    "\r",
    "\t",
    "<",
    ">",
    "=",
    "!",
    "unconfined",
    "peer=unconfined",
    "&",
    ":",
    "abi <abi/3.0>",
    "alias /a -> /b",
    "safe",
    "unsafe",
]


def _qualifiers(rng: random.Random) -> list[str]:
    words = [q for q in ("audit", rng.choice(["allow", "deny", ""]), "owner") if q and rng.random() < 0.3]
    if words and rng.random() < 0.1:
        rng.shuffle(words)
    return words


def _list(rng: random.Random, items: Sequence[str]) -> str:
    chosen = rng.sample(list(items), rng.randint(1, min(3, len(items))))
    return "(" + rng.choice([",", ", ", " "]).join(chosen) + ")"


def _target(rng: random.Random) -> str:
    return rng.choice(TARGETS)


def _rule(rng: random.Random) -> str:
    """One rule from the grammar (of raw rules as apparmor.d(5) has them, so the
    transition forms are in it too)."""
    kind = rng.choice(
        ["file", "file", "file", "cap", "net", "mount", "pivot", "ptrace", "signal", "link", "rlimit", "other"]
    )
    words: list[str] = []
    if kind == "file":
        path, perms = rng.choice(PATHS), rng.choice(PERMS)
        words = [path, perms] if rng.random() < 0.8 else [perms, path]
        if rng.random() < 0.15:
            words.insert(0, "file")
        if rng.random() < 0.2:
            words += ["->", _target(rng)]
    elif kind == "cap":
        words = ["capability", *rng.sample(CAPS, rng.randint(0, 2))]
    elif kind == "net":
        words = ["network", *rng.sample(NET, rng.randint(0, 2))]
    elif kind == "mount":
        words = [rng.choice(["mount", "mount", "remount", "umount"])]
        words += rng.sample(MOUNT_CONDS, rng.randint(0, 2))
        if rng.random() < 0.6:
            words.append(rng.choice(["/dev/sda", "tmpfs", "@{PROC}", "/a"]))
        if rng.random() < 0.5:
            words += ["->", rng.choice(["/mnt/**", "/b", *TARGETS])]
    elif kind == "pivot":
        words = ["pivot_root"]
        if rng.random() < 0.3:
            words.append("oldroot=/old/")
        if rng.random() < 0.7:
            words.append(rng.choice(["/new/", "/x", "@{HOME}/r"]))
        if rng.random() < 0.4:
            words += ["->", _target(rng)]
    elif kind in ("ptrace", "signal"):
        access = {"ptrace": ["read", "trace", "readby", "tracedby", "r"], "signal": ["send", "receive", "rw"]}[kind]
        words = [kind]
        if rng.random() < 0.6:
            words.append(rng.choice(access) if rng.random() < 0.5 else _list(rng, access))
        if kind == "signal" and rng.random() < 0.3:
            words.append("set=" + rng.choice(["hup", "(term, kill)", "rtmin+3"]))
        if rng.random() < 0.7:
            words.append("peer=" + rng.choice(PEERS))
    elif kind == "link":
        words = ["link", *(["subset"] if rng.random() < 0.3 else []), "/a", "->", rng.choice(["/b", *TARGETS])]
    elif kind == "rlimit":
        return f"set rlimit {rng.choice(['nofile', 'nproc', 'bogus'])} <= {rng.choice(['1024', '10M', 'infinity'])},"
    else:
        words = [
            rng.choice(
                ["change_profile", "change_hat", "profile x", "hat h", "^h", "include <abstractions/base>", "unix"]
            ),
            *([rng.choice(["->", "-> "]) + _target(rng)] if rng.random() < 0.5 else []),
        ]
    return " ".join([*_qualifiers(rng), *words]) + ","


def _squeeze_arrow(text: str, rng: random.Random) -> str:
    """`-> x` becomes `->x` (the issue's escape), or `x ->` becomes `x->`."""
    return text.replace("-> ", "->") if rng.random() < 0.5 else text.replace(" ->", "->")


def _mutate(text: str, rng: random.Random) -> str:
    op = rng.randrange(7)
    pos = rng.randint(0, len(text))
    if op == 0:
        return text[:pos] + rng.choice(EVIL) + text[pos:]
    if op == 1:
        spaces = [m.start() for m in re.finditer(r" ", text)]
        if spaces:
            pos = rng.choice(spaces)
            return text[:pos] + " " + rng.choice(EVIL) + " " + text[pos + 1 :]
        return text
    if op == 2:
        return _squeeze_arrow(text, rng)
    if op == 3:
        return text[:pos] + text[pos + 1 :]
    if op == 4:
        return text.replace(" ", rng.choice(["\n", "\t", "  ", "\u00a0", ""]), 1)
    if op == 5:
        words = text.split(" ")
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
        return " ".join(words)
    return text.upper() if rng.random() < 0.2 else text + "\n" + _rule(rng)


def generate(rng: random.Random) -> str:
    """A raw-rules text: 1-4 rules from the grammar, then 0-3 mutations."""
    text = "\n".join(_rule(rng) for _ in range(rng.randint(1, 4)))
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        text = _mutate(text, rng)
    return text


# -- the oracles ---------------------------------------------------------------------------

#: What a transition, a new profile or an include looks like in rule text: the quick
#: screen that sends a case to the compile check whatever else is sampled.
SUSPICIOUS = re.compile(
    r"->|\b(?:change_profile|change_hat|profile|hat|include|abi|alias)\b|(?:^|\s)\^|[#&{}]|"
    r"(?<![A-Za-z])[a-z]*[PpCcUu][Ii]?[Xx](?![A-Za-z])"
)
_VARS = re.compile(r"@\{[A-Za-z0-9_]+\}")


def suspicious(rules: Sequence[str]) -> bool:
    """Whether accepted rules look like a transition, a profile or an include (variables
    such as @{profile_name} aside): these are always compiled by the long run."""
    return bool(SUSPICIOUS.search(_VARS.sub("", "\n".join(rules))))


Validator = Callable[[str], Sequence[str]]


def accepted_rules(validate: Validator, text: str) -> list[str] | None:
    """The rules a validator accepts from `text`, or None if it refuses them."""
    try:
        return list(dict.fromkeys(validate(text)))  # the builder writes each rule once
    except (RawRuleError, ValueError):
        return None


def policy_with(rules: Sequence[str], *, per_target: bool) -> dict[str, object]:
    """An EnhanceProtect policy holding `rules` container-wide, or for one executable."""
    group: dict[str, object] = {"rules": "\n".join(f"{r}," for r in rules)}
    if per_target:
        group["targets"] = ["/usr/bin/fz-target"]
    return policy("fz", "fz", enhance={"hardeningRules": ["disable-cap-sys-boot"], "appArmorRawRules": [group]})


def _placeholders(rules: Sequence[str]) -> list[str]:
    return [f"deny /varmor-fuzz-placeholder-{i} r" for i in range(len(rules))]


def wrapper(rules: Sequence[str]) -> str:
    """The rules alone in one profile, with no transition of the builder's to hide among."""
    body = "".join(f"  {r},\n" for r in rules)
    return f"abi <abi/3.0>,\n#include <tunables/global>\nprofile fzprobe {{\n{body}}}\n"


@dataclass(frozen=True)
class Case:
    """One accepted rule set, built the way varmor builds it (container-wide and for an
    executable target), plus references: the same policies with the raw rules replaced by
    placeholders (same shape, same children)."""

    rules: tuple[str, ...]
    profiles: tuple[str, str]
    references: tuple[str, str]


def build_case(rules: Sequence[str]) -> Case:
    """The builder writes what a validator accepted: the rules go in where the
    placeholders are (what render() does with any accepted rules), so the old validator's
    rules are built exactly as they were with the previous validator."""
    profiles: list[str] = []
    references: list[str] = []
    for per_target in (False, True):
        ref = compile_policy(policy_with(_placeholders(rules), per_target=per_target), "varmor").profile.text
        text = ref
        for placeholder, rule in zip(_placeholders(rules), rules, strict=True):
            text = text.replace(f"{placeholder},", f"{rule},")
        profiles.append(text)
        references.append(ref)
    return Case(tuple(rules), (profiles[0], profiles[1]), (references[0], references[1]))


_RULE_PERMS = re.compile(r"^rule: (\S+) .*\((0x[0-9a-f]+)/(?:0x)?([0-9a-f]+)\)", re.M)
_XTABLE = b"\x04\x07\x00xtable\x00"


def xtables(binary: bytes) -> list[list[str]]:
    """Each profile's exec-transition table in a binary policy (`xtable`: the names an exec
    or a pivot_root may move a process to), in order."""
    tables: list[list[str]] = []
    pos = binary.find(_XTABLE)
    while pos >= 0:
        i = pos + len(_XTABLE) + 2  # struct, array
        count = int.from_bytes(binary[i : i + 2], "little")
        i += 2
        names: list[str] = []
        for _ in range(count):
            size = int.from_bytes(binary[i + 1 : i + 3], "little")
            names.append(binary[i + 3 : i + 3 + size].rstrip(b"\0").decode(errors="replace"))
            i += 3 + size
        tables.append(names)
        pos = binary.find(_XTABLE, i)
    return tables


def transition_perms(rule_exprs: str) -> list[str]:
    """Rules in a `-D rule-exprs` dump that move a process elsewhere: file rules whose exec
    mode is anything but inherit (px, cx, ux, named), change_profile/onexec bits, and mount
    class rules with a transition index (pivot_root -> target)."""
    found: list[str] = []
    for match in _RULE_PERMS.finditer(rule_exprs):
        expr, perms = match.group(1), [int(match.group(2), 16), int(match.group(3), 16)]
        if expr.startswith("\\x07"):  # mount class: a transition sets an index above the perms
            bad = any(p & ~0x7F for p in perms)
        elif expr.startswith("\\"):  # other classes (signal, ptrace, unix...) have no transitions
            bad = False
        else:  # file rules: user and other halves of 14 bits; only inherit (bit 9) as exec mode
            halves = [h for p in perms for h in (p & 0x3FFF, (p >> 14) & 0x3FFF)]
            bad = any(h & 0x3F80 not in (0, 0x200) for h in halves) or any(p >> 28 for p in perms)
        if bad:
            found.append(match.group(0))
    return found


def _parser(args: Sequence[str], path: Path, inc: Path) -> subprocess.CompletedProcess[bytes]:
    cmd = [find_parser(), "--config-file", "/dev/null", "-M", str(features_file()), "-I", str(inc), *args, str(path)]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


STRICT = ("-Q", "-K", "--warn=rule-not-enforced", "--Werror=rule-not-enforced")


@dataclass
class _Seen:
    """What the parser makes of one profile text."""

    ok: bool
    names: list[str]
    xtables: list[list[str]]
    lines: Counter[str]
    transitions: list[str]


class Oracle:
    """Compiles profiles with the pinned features and says what in them the builder did
    not write. References are compiled once per shape."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inc = write_sample_include(root / "inc")
        self._refs: dict[str, _Seen] = {}
        self._n = 0

    def see(self, text: str, *, dump: bool = False) -> _Seen:
        self._n += 1
        path = self.root / f"p{self._n}.aa"
        path.write_text(text)
        compiled = _parser([*STRICT, "-S", *(["-D", "rule-exprs"] if dump else [])], path, self.inc)
        names = _parser(["-N"], path, self.inc).stdout.decode(errors="replace").split()
        pre = _parser(["-p"], path, self.inc).stdout.decode(errors="replace")
        lines = Counter(line.strip() for line in pre.splitlines() if line.strip())
        found = transition_perms(compiled.stderr.decode(errors="replace")) if dump else []
        return _Seen(compiled.returncode == 0, sorted(names), xtables(compiled.stdout), lines, found)

    def reference(self, text: str) -> _Seen:
        if text not in self._refs:
            self._refs[text] = self.see(text, dump=True)
        return self._refs[text]

    def escapes(self, case: Case) -> tuple[bool, list[str]]:
        """(whether the profiles compile, what in them the builder did not write)."""
        problems: list[str] = []
        raw = Counter(f"{r}," for r in case.rules)
        alone = self.see(wrapper(case.rules), dump=True)
        alone_ref = self.reference(wrapper(_placeholders(case.rules)))
        if alone.ok:  # what fails to compile is refused at admission and never loaded
            problems += [f"transition: {t}" for t in alone.transitions]
            if alone.xtables:
                problems.append(f"exec/pivot_root transition table {alone.xtables}")
            if alone.names != ["fzprobe"]:
                problems.append(f"profiles {alone.names} besides fzprobe")
            if extra := alone.lines - alone_ref.lines - raw:
                problems.append(f"alone: preprocessed lines besides the rules: {sorted(extra)[:3]}")
        compiled = True
        for scope, text, ref_text in zip(("global", "target"), case.profiles, case.references, strict=True):
            seen, ref = self.see(text), self.reference(ref_text)
            compiled = compiled and seen.ok
            if not seen.ok:
                continue
            if seen.names != ref.names:
                problems.append(f"{scope}: profiles {seen.names}, the builder wrote {ref.names}")
            if seen.xtables != ref.xtables:
                problems.append(f"{scope}: transitions {seen.xtables}, the builder wrote {ref.xtables}")
            if extra := seen.lines - ref.lines - raw:
                problems.append(f"{scope}: preprocessed lines the builder did not write: {sorted(extra)[:3]}")
        return compiled, problems


def judge(cases: Sequence[Case]) -> list[tuple[bool, list[str]]]:
    with tempfile.TemporaryDirectory(prefix="varmor-fuzz-") as tmp:
        oracle = Oracle(Path(tmp))
        return [oracle.escapes(case) for case in cases]


# -- the test: a bounded, derandomized run in `make test` ---------------------------------

CURRENT: Validator = lambda text: check_raw_rules(text).rules  # noqa: E731
#: The bounded run of `make test`: EXAMPLES derandomized examples of TEXTS texts each.
EXAMPLES = 40
TEXTS = 20


def test_known_escapes_are_refused() -> None:
    for text in (
        "pivot_root /x ->unconfined,",
        "pivot_root /x -> unconfined,",
        "pivot_root /x ->varmor-tenant-b-web,",
        "deny /a r,\npivot_root oldroot=/o /n ->varmor-tenant-b-web,",
        "/bin/sh ix ->unconfined,",
        "mount /a ->unconfined,",
        "link /a ->unconfined,",
    ):
        assert accepted_rules(CURRENT, text) is None, text


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.randoms(use_true_random=False), min_size=TEXTS, max_size=TEXTS))
def test_fuzz_accepted_rules_compile_to_nothing_the_builder_did_not_write(rngs: list[random.Random]) -> None:
    """TEXTS generated texts per example; every accepted rule set is compiled alone,
    container-wide and per target, and compared with its references."""
    cases: list[Case] = []
    for rng in rngs:
        rules = accepted_rules(CURRENT, generate(rng))
        if rules:
            case = build_case(rules)
            for per_target, text in zip((False, True), case.profiles, strict=True):  # built as varmor builds
                assert compile_policy(policy_with(rules, per_target=per_target), "varmor").profile.text == text
            cases.append(case)
    for case, (_, problems) in zip(cases, judge(cases), strict=True):
        assert not problems, f"{case.rules}: {problems}"


def test_the_oracle_sees_transitions_profiles_and_includes() -> None:
    """The compiled-output checks are not vacuous: the escapes the old validator let
    through, and what the character check stops (blocks, includes), are each reported."""
    escapes = [
        ("pivot_root /x ->unconfined",),
        ("pivot_root /x ->varmor-tenant-b-web",),
        ("deny /a r", "pivot_root oldroot=/o/ /n/ ->unconfined"),
        ("/bin/sh px",),
        ("/bin/sh ux",),
        ("/bin/sh Cx -> kid",),
        ("change_profile -> unconfined",),
        ("profile evil /usr/bin/** {\n file,\n}\n deny /y r",),
        ("^hat {\n file,\n}\n deny /x r",),
        ("#include <abstractions/base>\n  deny /x r",),
    ]
    verdicts = judge([build_case(rules) for rules in escapes])
    for rules, (_, problems) in zip(escapes, verdicts, strict=True):
        assert problems, rules
