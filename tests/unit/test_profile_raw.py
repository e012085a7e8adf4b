"""Raw rules are untrusted: an allow-list that quotes what it refuses, fuzzed against the
real parser (no accepted input defines a second profile or reaches outside its block)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varmor.parser import compile_check, features_file, find_parser
from varmor.profile import RawRuleError, validate_raw_rules

ACCEPT = [
    ("audit deny /etc/hosts r,", ["audit deny /etc/hosts r"]),
    ("deny /a r, deny /b w,\n", ["deny /a r", "deny /b w"]),
    ("deny /bin/sh x,", ["deny /bin/sh x"]),
    ("/usr/bin/foo rix,", ["/usr/bin/foo rix"]),
    ("owner /tmp/**   rw,", ["owner /tmp/** rw"]),
    ("r /etc/x,", ["r /etc/x"]),
    ("file,", ["file"]),
    ("deny capability net_admin,", ["deny capability net_admin"]),
    ("network inet stream,", ["network inet stream"]),
    ("deny mount fstype=proc,", ["deny mount fstype=proc"]),
    ("mount options=(ro,bind) /a -> /b,", ["mount options=(ro,bind) /a -> /b"]),
    ("deny ptrace (read) peer=unconfined,", ["deny ptrace (read) peer=unconfined"]),
    ("signal (send, receive) peer=@{profile_name},", ["signal (send, receive) peer=@{profile_name}"]),
    ("set rlimit nofile <= 1024,", ["set rlimit nofile <= 1024"]),
    ("link subset /a -> /b,", ["link subset /a -> /b"]),
    ("deny @{PROC}/sys/[^k]** w,", ["deny @{PROC}/sys/[^k]** w"]),
    ('"/path with space" r,', ['"/path with space" r']),
    ("deny /x r,\n\n  deny /y r,  ", ["deny /x r", "deny /y r"]),
]

REJECT = [
    ("} profile evil {", "braces are not allowed", "} profile evil {"),
    ("deny /x r, }\nprofile evil { file, ", "braces are not allowed", "}"),
    ("#include <abstractions/base>", "'#' is not allowed", "#include"),
    ("include <abstractions/base>,", "'<' and '>' are not allowed", "include"),
    ("include if exists foo,", "includes are not allowed", "include if exists foo"),
    ("profile evil /bin/x,", "profile definitions are not allowed", "profile evil /bin/x"),
    ("hat foo,", "hat definitions are not allowed", "hat foo"),
    ("^foo,", "'^' is only allowed", "^foo"),
    ("change_profile -> unconfined,", "change_profile reaches other profiles", "change_profile"),
    ("change_profile,", "change_profile reaches other profiles", "change_profile"),
    ("/bin/sh px,", "exec transitions", "/bin/sh px"),
    ("/bin/sh Px -> other,", "named exec transitions", "/bin/sh Px -> other"),
    ("/bin/sh cx -> child,", "named exec transitions", "/bin/sh cx -> child"),
    ("/bin/sh ux,", "exec transitions", "/bin/sh ux"),
    ("/bin/sh pix,", "exec transitions", "/bin/sh pix"),
    ("/bin/sh Cx,", "exec transitions", "/bin/sh Cx"),
    ("/bin/sh x,", "needs the 'ix' mode", "/bin/sh x"),
    ("@{HOME}=/tmp,", "variable definitions are not allowed", "@{HOME}=/tmp"),
    ("@{X} += /y,", "variable definitions are not allowed", "@{X} += /y"),
    ("abi <abi/4.0>,", "'<' and '>' are not allowed", "abi"),
    ("abi foo,", "abi declarations are not allowed", "abi foo"),
    ("alias /a -> /b,", "alias rules are not allowed", "alias /a -> /b"),
    ("pivot_root /new -> evil,", "switches profiles", "pivot_root /new -> evil"),
    ("signal peer=x -> y,", "'->' is not allowed", "signal peer=x -> y"),
    ("deny /etc/x r", "every rule must end with ','", "deny /etc/x r"),
    ("$foo = true,", "boolean variables", "$foo"),
    ("deny /x r\\,", "backslash", "deny /x r\\"),
    ("/a r, ) ,", "unbalanced ')'", ")"),
    ('"/a r,', "unterminated quote", '"/a r,'),
    ("frobnicate,", "unsupported rule kind", "frobnicate"),
    ("capability (x),", "unexpected '(x)' in a capability rule", "capability (x)"),
    ("deny,", "a qualifier needs a rule", "deny"),
    ("/a r,,", "empty rule", ","),
    ("", "no rules given", ""),
    ("deny /a\x00 r,", "control characters", "deny /a"),
    ("set rlimit nofile <= 1024 /x,", "only 'set rlimit NAME <= VALUE'", "set rlimit"),
    ("/a /b,", "a file rule is a path and its permissions", "/a /b"),
    ("/a r /b,", "a file rule is a path and its permissions", "/a r /b"),
]


@pytest.mark.parametrize(("text", "rules"), ACCEPT)
def test_accepts_legitimate_rules(text: str, rules: list[str]) -> None:
    assert validate_raw_rules(text) == rules


@pytest.mark.parametrize(("text", "reason", "quoted"), REJECT)
def test_rejects_with_a_quote(text: str, reason: str, quoted: str) -> None:
    with pytest.raises(RawRuleError) as exc:
        validate_raw_rules(text)
    assert reason in str(exc.value)
    assert quoted in str(exc.value)


def test_accepted_rules_compile() -> None:
    rules = [r for text, _ in ACCEPT for r in validate_raw_rules(text)]
    results = compile_check({"all": wrap("acc", rules)})
    assert results["all"].ok, results["all"].message


def wrap(name: str, rules: list[str]) -> str:
    body = "".join(f"  {r},\n" for r in rules)
    return (
        "abi <abi/3.0>,\n#include <tunables/global>\n"
        f"profile {name} {{\n  #include <abstractions/base>\n  file,\n{body}}}\n"
    )


# Fragments that matter to the parser, so the fuzzer builds near-misses, not noise.
FRAGMENTS = [
    "deny",
    "audit",
    "owner",
    "allow",
    "/etc/x",
    "/bin/sh",
    "@{PROC}/x",
    "r",
    "w",
    "rw",
    "x",
    "ix",
    "rix",
    "px",
    "Px",
    "cx",
    "Cx",
    "ux",
    "pix",
    "->",
    "child",
    "evil",
    "profile",
    "hat",
    "^h",
    "{",
    "}",
    ",",
    ", ",
    " ",
    "\n",
    "#",
    "#include",
    "include",
    "<abstractions/base>",
    "@{X}",
    "=",
    "+=",
    "capability",
    "sys_admin",
    "network",
    "inet",
    "mount",
    "umount",
    "pivot_root",
    "link",
    "signal",
    "(send)",
    "peer=unconfined",
    "change_profile",
    "change_hat",
    '"',
    "(",
    ")",
    "set",
    "rlimit",
    "nofile",
    "<=",
    "1",
    "file",
    "ptrace",
    "unix",
    "abi",
    "alias",
    "$b",
    "\\",
    "options=(ro,bind)",
    "fstype=proc",
    "/a",
    "/b",
]
HEADS = [
    "/etc/x",
    "/bin/sh",
    "@{PROC}/x",
    "capability",
    "network",
    "mount",
    "umount",
    "pivot_root",
    "signal",
    "ptrace",
    "link",
    "file",
    "unix",
    "set rlimit",
    "r",
    "rw",
]
one_rule = st.tuples(
    st.lists(st.sampled_from(["deny", "audit", "owner", "allow"]), max_size=2),
    st.sampled_from(HEADS + FRAGMENTS),
    st.lists(st.sampled_from(FRAGMENTS), max_size=4),
).map(lambda t: " ".join([*t[0], t[1], *t[2]]) + ",")
BENIGN = [
    "r",
    "w",
    "rw",
    "ix",
    "rix",
    "x",
    "inet",
    "stream",
    "sys_admin",
    "fstype=proc",
    "/a",
    "/b",
    "->",
    "peer=unconfined",
    "(send)",
    "options=(ro,bind)",
    "subset",
    "<=",
]
EVIL = [
    "px",
    "Px",
    "cx",
    "ux",
    "}",
    "{",
    "#include",
    "include",
    "profile",
    "hat",
    "^h",
    "@{X}",
    "=",
    "+=",
    "\\",
    "$b",
    '"',
    "(",
    ")",
    ",",
    "\n}",
    "-> evil",
    "change_profile",
]


@st.composite
def near_miss(draw: st.DrawFn) -> str:
    """A plausible rule with one hostile fragment inserted somewhere."""
    words = [
        *draw(st.lists(st.sampled_from(["deny", "audit", "owner"]), max_size=2)),
        draw(st.sampled_from(HEADS)),
        *draw(st.lists(st.sampled_from(BENIGN), max_size=3)),
    ]
    words.insert(draw(st.integers(0, len(words))), draw(st.sampled_from(EVIL)))
    return " ".join(words) + ","


benign_rule = st.tuples(
    st.lists(st.sampled_from(["deny", "audit", "owner"]), max_size=2),
    st.sampled_from(HEADS),
    st.lists(st.sampled_from(BENIGN), max_size=3),
).map(lambda t: " ".join([*t[0], t[1], *t[2]]) + ",")
raw_texts = st.lists(one_rule, min_size=1, max_size=4).map("\n".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_never_crashes(text: str) -> None:
    try:
        rules = validate_raw_rules(text)
    except RawRuleError:
        return
    assert validate_raw_rules(",\n".join(rules) + ",") == rules  # normal form is stable


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(benign_rule, near_miss(), one_rule, raw_texts), min_size=12, max_size=12))
def test_fuzz_accepted_rules_stay_in_their_profile(texts: list[str]) -> None:
    """Whatever passes the validator and compiles yields exactly one profile whose name is
    ours: no second profile, hat or child, no include, nothing outside the block."""
    accepted: dict[str, str] = {}
    for i, text in enumerate(texts):
        try:
            rules = validate_raw_rules(text)
        except RawRuleError:
            continue
        joined = re.sub(r"@\{\w+\}", "", " ".join(rules))
        assert not {"{", "}", "#"} & set(joined)
        for rule in rules:
            head = next(w for w in rule.split() if w not in {"deny", "audit", "owner", "allow"})
            assert head not in {"include", "profile", "hat", "change_profile", "abi", "alias"}
        accepted[f"fz{i}"] = wrap(f"fz{i}", rules)
    if not accepted:
        return
    compiled = {k for k, r in compile_check(accepted).items() if r.ok}
    if compiled:
        assert profile_names([accepted[k] for k in sorted(compiled)]) == sorted(compiled)


def profile_names(texts: list[str]) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, text in enumerate(texts):
            path = Path(tmp) / f"f{i}.aa"
            path.write_text(text)
            files.append(str(path))
        proc = subprocess.run(
            [find_parser(), "--config-file", "/dev/null", "-M", str(features_file()), "-N", *files],
            capture_output=True,
            text=True,
            check=True,
        )
    return sorted(proc.stdout.split())
