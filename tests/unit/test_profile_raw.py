"""Raw rules are untrusted: an allow-list grammar that quotes what it refuses (the
compiled-output fuzzer is test_profile_raw_fuzz.py), and warns about peers that may be
unconfined through the policy's warnings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_compiles, policy
from varmor.parser import compile_check
from varmor.pipeline import CompileError, compile_policy
from varmor.policy import parse_policy
from varmor.profile import RawRuleError, check_raw_rules, validate_raw_rules

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
    ("ptrace read peer=@{profile_name},", ["ptrace read peer=@{profile_name}"]),
    ("mount options in (bind,rbind,move) /proc** -> /**,", ["mount options in (bind,rbind,move) /proc** -> /**"]),
    (
        "deny mount options in (remount, bind) -> /sys/fs/cgroup**,",
        ["deny mount options in (remount, bind) -> /sys/fs/cgroup**"],
    ),
    ("mount fstype=tmpfs tmpfs -> /mnt/x/,", ["mount fstype=tmpfs tmpfs -> /mnt/x/"]),
    ("deny mount @{PROC},", ["deny mount @{PROC}"]),
    ("umount /mnt/x/,", ["umount /mnt/x/"]),
    ("remount options=ro /mnt/,", ["remount options=ro /mnt/"]),
    ("pivot_root oldroot=/old/ /new/,", ["pivot_root oldroot=/old/ /new/"]),
    ("pivot_root,", ["pivot_root"]),
    ("signal (send) set=(term,  kill) peer=sidecar-x,", ["signal (send) set=(term, kill) peer=sidecar-x"]),
    ("audit allow owner /x r,", ["audit allow owner /x r"]),
    ("owner link /a -> /b,", ["owner link /a -> /b"]),
    ("deny /pfad/ünïcode/** w,", ["deny /pfad/ünïcode/** w"]),
    ("set rlimit nice <= -10,", ["set rlimit nice <= -10"]),
    ("capability,", ["capability"]),
    ("capability chown sys_admin,", ["capability chown sys_admin"]),
    ("unix (create, connect) type=stream,", ["unix (create, connect) type=stream"]),
    ("deny unix addr=@/containerd-shim/**,", ["deny unix addr=@/containerd-shim/**"]),
    ("unix (send) peer=(label=x, addr=@/y),", ["unix (send) peer=(label=x, addr=@/y)"]),
    ('signal (receive, send) set=("exists"),', ['signal (receive, send) set=("exists")']),
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
    # the escapes a review found: '->' without a space, and into another tenant's profile
    ("pivot_root /x ->unconfined,", "'->' in a pivot_root rule switches profiles", "pivot_root /x ->unconfined"),
    ("pivot_root /x -> unconfined,", "'->' in a pivot_root rule switches profiles", "-> unconfined"),
    ("pivot_root /x ->varmor-b-web,", "'->' in a pivot_root rule switches profiles", "->varmor-b-web"),
    ("pivot_root oldroot=/o/ /n/ ->x,", "'->' in a pivot_root rule switches profiles", "->x"),
    ("/bin/sh ix ->unconfined,", "named exec transitions", "/bin/sh ix ->unconfined"),
    ("/a r -> b,", "named exec transitions", "/a r -> b"),
    ("mount /a ->/b,", "'->' must stand alone", "mount /a ->/b"),
    ("mount /a -> unconfined,", "the mountpoint after '->' must be an absolute path", "unconfined"),
    ("link /a -> evil,", "the link target must be an absolute path", "evil"),
    ("link /a->/b,", "'->' must stand alone", "/a->/b"),
    ("ptrace ->unconfined,", "'->' is not allowed here", "ptrace ->unconfined"),
    ("/a\u202e r,", "Unicode format characters (bidi controls, U+202E)", "/a\\u202e r"),
    ("/a\u200b r,", "Unicode format characters", "/a"),
    ("/a\u00a0r,", "control characters and other invisible ones (U+00A0)", "/a"),
    ("unix (connect) peer=(label=x, evil=y),", "'evil=y' is not a valid peer value", "evil=y"),
    ("unix peer=x,", "a unix peer is a (label=... addr=...) list, not 'x'", "unix peer=x"),
    ("signal peer=(label=x),", "a peer is one label, not '(label=x)'", "signal peer=(label=x)"),
    ("unix set=hup,", "unknown condition 'set' in a unix rule", "unix set=hup"),
    ("dbus send,", "dbus rules are not enforced", "dbus send"),
    ("deny audit /x r,", "qualifiers go once each, in the order audit, allow|deny, owner", "deny audit /x r"),
    ("deny deny /x r,", "qualifiers go once each", "deny deny /x r"),
    ("allow deny /x r,", "qualifiers go once each", "allow deny /x r"),
    ("capability bogus,", "unexpected 'bogus' in a capability rule", "capability bogus"),
    ("network inet profile,", "unexpected 'profile' in a network rule", "network inet profile"),
    ("network ux,", "unexpected 'ux' in a network rule", "network ux"),
    ("owner capability chown,", "'owner' applies only to file and link rules", "owner capability chown"),
    ("audit owner signal,", "'owner' applies only to file and link rules", "audit owner signal"),
    ("deny /bin/sh ix,", "a deny rule takes plain 'x'", "deny /bin/sh ix"),
    ("/bin/sh ri,", "'i' goes with an allowed 'x' only", "/bin/sh ri"),
    ("mount options=(ro,evil) /a,", "'evil' is not a valid options value in a mount rule", "mount options"),
    ("mount fstype proc,", "unexpected 'proc' in a mount rule", "mount fstype proc"),
    ("mount 'x' -> /a,", "the mount source must be a path or a device name", "mount 'x' -> /a"),
    ("mount options in ro /a,", "'options in' needs a (list)", "options in ro"),
    ("mount label=x /a,", "unknown condition 'label' in a mount rule", "label=x"),
    ('signal peer="a b",', "'a b' is not a valid peer value in a signal rule", "signal peer="),
    ("signal set=hup set=int,", "condition 'set' given twice", "set=int"),
    ("ptrace (read, write_all),", "'write_all' is not a valid access value", "ptrace (read, write_all)"),
    ("ptrace set=hup,", "unknown condition 'set' in a ptrace rule", "ptrace set=hup"),
    ("umount /a /b,", "unexpected '/b' in a umount rule", "umount /a /b"),
    ("set rlimit bogus <= 1,", "only 'set rlimit NAME <= VALUE'", "set rlimit bogus"),
    ("deny set rlimit nofile <= 1,", "only 'set rlimit NAME <= VALUE'", "set rlimit"),
    ("/a|b r,", "is not a path varmor accepts", "/a|b"),
    ("signal ((send)),", "nested parentheses are not allowed", "(("),
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


#: Accepted by the grammar, refused by the compile check: the pinned ABI cannot enforce it
#: (an allowed unix rule compiles: it is downgraded to `network unix`).
NOT_ENFORCED = ("deny unix addr=@/containerd-shim/**",)


def enforceable(rules: list[str]) -> list[str]:
    return [r for r in rules if r not in NOT_ENFORCED]


def test_unenforceable_unix_rules_are_left_to_the_compile_check() -> None:
    results = compile_check({r: wrap("ne", [r]) for r in NOT_ENFORCED})
    assert all(not r.ok and "network rule" in r.message for r in results.values()), results


def test_accepted_rules_compile() -> None:
    rules = enforceable([r for text, _ in ACCEPT for r in validate_raw_rules(text)])
    results = compile_check({"all": wrap("acc", rules)})
    assert results["all"].ok, results["all"].message


def wrap(name: str, rules: list[str]) -> str:
    body = "".join(f"  {r},\n" for r in rules)
    return (
        "abi <abi/3.0>,\n#include <tunables/global>\n"
        f"profile {name} {{\n  #include <abstractions/base>\n  file,\n{body}}}\n"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_never_crashes(text: str) -> None:
    try:
        rules = validate_raw_rules(text)
    except RawRuleError:
        return
    assert validate_raw_rules(",\n".join(rules) + ",") == rules  # normal form is stable


def test_allowed_peers_are_only_this_profile_or_named_non_varmor_profiles() -> None:
    """A raw rule can reach no other tenant: globs and variables (which could match any
    profile, and are costly to match), other varmor profiles, and ptrace to anything but
    the profile itself are refused; signals to a named outsider are allowed with a warning."""
    refused = [
        "ptrace (read) peer=unconfined,",
        "ptrace read,",
        "audit ptrace read peer=u*,",
        "ptrace (trace, read) peer=varmor-victimns-*,",
        "ptrace (read) peer=docker-default,",
        "signal peer=**,",
        "signal peer=@{X},",
        "signal (send) peer=varmor-*,",
        "signal (send) peer=varmor-other-ns-web,",
        "signal peer=" + "**" * 40 + "x,",
    ]
    for text in refused:
        with pytest.raises(RawRuleError):
            check_raw_rules(text)
    warned = ["signal (send) peer=unconfined,", 'signal peer="unconfined",', "signal (send),", "signal peer=x//y,"]
    for text in warned:
        (warning,) = check_raw_rules(text).warnings
        assert text.rstrip(",") in warning, warning
        assert "outside any profile" in warning, warning
    quiet = [
        "deny ptrace (read) peer=unconfined,",
        "audit deny signal peer=*,",
        "signal (send) peer=@{profile_name},",
        "ptrace (read) peer=@{profile_name},",
    ]
    for text in quiet:
        assert check_raw_rules(text).warnings == (), text


def test_a_peer_glob_is_refused_in_linear_time() -> None:
    """`signal peer=**...**x` made the old check backtrack for hours on the event loop."""
    import time

    start = time.process_time()
    with pytest.raises(RawRuleError):
        check_raw_rules("signal peer=" + "**" * 5000 + "x,")
    assert time.process_time() - start < 1.0


def test_peer_warnings_reach_the_policy_and_the_built_profile() -> None:
    group = {"rules": "signal (send) peer=unconfined,\ndeny /x r,", "targets": ["/usr/bin/app"]}
    doc = policy("w", "team-a", enhance={"appArmorRawRules": [{"rules": "deny /y r,"}, group]})
    compiled = compile_policy(doc, "varmor")
    (warning,) = [w for w in compiled.warnings if "unconfined" in w]
    assert warning.startswith("spec.policy.enhanceProtect.appArmorRawRules[1].rules: raw rule 'signal (send)")
    assert warning in parse_policy(doc).warnings


def test_accepted_rules_build_and_compile_globally_and_per_target() -> None:
    rules = "\n".join(f"{r}," for r in enforceable([r for text, _ in ACCEPT for r in validate_raw_rules(text)]))
    texts = {
        scope: compile_policy(policy("acc", "team-a", enhance={"appArmorRawRules": [group]}), "varmor").profile.text
        for scope, group in (("global", {"rules": rules}), ("target", {"rules": rules, "targets": ["/usr/bin/a"]}))
    }
    assert_compiles(texts)


@pytest.mark.parametrize("privileged", [False, True])
@pytest.mark.parametrize("targets", [[], ["/usr/bin/app"]])
@pytest.mark.parametrize("rule", ["pivot_root /x ->unconfined,", "pivot_root /x ->varmor-tenant-b-web,"])
def test_issue_13_escapes_are_refused_through_the_pipeline(rule: str, targets: list[str], privileged: bool) -> None:
    """The two escapes a review found, globally and per target, with and without privileged."""
    group: dict[str, object] = {"rules": f"deny /etc/x r,\n{rule}", **({"targets": targets} if targets else {})}
    doc = policy("esc", "team-a", enhance={"privileged": privileged, "appArmorRawRules": [group]})
    with pytest.raises(CompileError) as exc:
        compile_policy(doc, "varmor")
    assert exc.value.reason == "Invalid"
    assert "'->' in a pivot_root rule switches profiles" in exc.value.message
    assert rule.rstrip(",") in exc.value.message
