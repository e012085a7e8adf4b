"""The agent re-checks every ArmorProfile's text before loading it (finding: it loaded
whatever an ArmorProfile held when name and hash matched). What varmor's builder writes
passes; every way the review found to do more than that is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import armor_profile, policy_doc
from varmor.nodeexec.state import Failed, validate
from varmor.pipeline import compile_policy
from varmor.profile.trust import check_profile_text

GOLDEN = Path(__file__).parent / "golden"


def golden() -> list[tuple[str, str]]:
    """(profile name, text) of every golden profile the builder writes."""
    out = []
    for path in sorted(GOLDEN.glob("*.apparmor")):
        text = path.read_text()
        name = re.search(r"^profile (\S+)", text, re.M)
        assert name is not None, path
        out.append((name[1], text))
    return out


@pytest.mark.parametrize(("name", "text"), golden(), ids=lambda v: v if len(v) < 60 else "")
def test_what_the_builder_writes_passes(name: str, text: str) -> None:
    mode = "complain" if re.search(r"^profile \S+ flags=\([^)]*complain", text, re.M) else "enforce"
    assert check_profile_text(name, text, mode) is None


def test_policies_with_targets_and_raw_rules_pass() -> None:
    doc = policy_doc(
        hardeningRules=["disable-cap-privileged"],
        attackProtectionRules=[{"rules": ["disable-shell"], "targets": ["/usr/bin/python3", "/usr/bin/node"]}],
        appArmorRawRules=[{"rules": "deny /etc/secret r,\ndeny network raw,"}],
    )
    for path in sorted(GOLDEN.glob("*.yaml")):
        for policy in (doc, yaml.safe_load(path.read_text())):
            compiled = compile_policy(policy, "varmor")
            profile = compiled.profile
            assert check_profile_text(profile.name, profile.text, profile.mode) is None, path


NAME = "varmor-team-a-web"
HEADER = (
    f"abi <abi/3.0>,\n#include <tunables/global>\n\nprofile {NAME} flags=(attach_disconnected,mediate_deleted) {{\n"
)


def profile(*rules: str, header: str = HEADER, tail: str = "}\n") -> str:
    return header + "  #include <abstractions/base>\n" + "".join(f"  {r}\n" for r in rules) + tail


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (profile(header=f"profile {NAME} /** {{\n"), "attachment"),
        (profile(header=f"profile {NAME} /usr/sbin/sshd flags=(complain) {{\n"), "attachment"),
        (profile("change_profile -> unconfined,"), "reaches other profiles"),
        (profile("change_profile,"), "reaches other profiles"),
        (profile("/bin/sh ux,"), "names another profile (or none)"),
        (profile("/bin/** Pux,"), "names another profile (or none)"),
        (profile("/bin/sh rUx,"), "names another profile (or none)"),
        (profile("/bin/sh px -> sshd,"), "transition to 'sshd'"),
        (profile("/bin/sh cx -> varmor-other-ns-policy,"), "transition"),
        (profile("pivot_root /x -> unconfined,"), "neither a mount point"),
        (profile("pivot_root /x ->unconfined,"), "neither a mount point"),
        (profile("mount -> /x, /bin/sh px -> sshd,"), "more than one arrow"),
        (profile("mount options=(bind) /a -> sshd,"), "neither a mount point"),
        (profile('#include "/etc/shadow"'), "include"),
        (profile("include <abstractions/apache2-common>"), "include"),
        (profile("#include </etc/shadow>"), "include"),
        (profile("^hat {", "}"), "one rule"),
        (profile("profile child_deadbeef /bin/sh {", "}"), "attachment"),
        (profile("profile sshd {", "}"), "not a child"),
        (profile() + "profile sshd {\n}\n", "not named"),
        (profile(tail="}\n}\n"), "unbalanced"),
        (profile(tail=""), "unbalanced"),
        (HEADER.replace(NAME, "varmor-other") + "}\n", "not named"),
        (profile("file,") + "\x00", "other than printable ones"),
        # A review's finds: a header hidden behind abi, braces and includes mid-line,
        # transitions without an arrow, the unconfined flag, and odd line breaks.
        (f"abi <abi/3.0>, profile {NAME} /usr/bin/** flags=(complain) {{ /foo r,\n" + profile(), "outside any profile"),
        (profile("/foo r, } profile usr.bin.man//evil /** { /** rwlkmix,"), "brace outside a path glob"),
        (profile('/foo r, include "/etc/shadow",'), "reaches other profiles or files"),
        (profile('/foo r, #include "/etc/shadow",'), "reaches other profiles or files"),
        (profile('/foo r, include if exists "/etc/shadow"'), "one rule"),
        (profile("/usr/bin/** px,"), "names another profile"),
        (profile("/usr/sbin/** Pix,"), "names another profile"),
        (profile(header=f"profile {NAME} flags=(unconfined) {{\n"), "flags"),
        (profile(header=f"profile {NAME} flags=(attach_disconnected,complain) {{\n"), "flags"),
        (profile(header=f"profile :ns:{NAME} {{\n"), "not named"),
        (profile("/foo r,\u2028profile x {"), "other than printable ones"),
        (profile("/foo\u202e r,"), "other than printable ones"),  # bidi override
        (profile("/foo\u200b r,"), "other than printable ones"),  # zero width
        (profile("/foo r,\rprofile x {"), "other than printable ones"),
        (profile(header=f"profile {'a' * 20000} {{\n"), "longer than"),
    ],
)
def test_escapes_are_refused(text: str, why: str) -> None:
    refused = check_profile_text(NAME, text)
    assert refused is not None
    assert why in refused


def test_a_child_may_move_only_into_its_siblings() -> None:
    child = "profile child_0123abcd flags=(attach_disconnected,mediate_deleted) {{\n    {rule}\n  }}"
    ok = profile("/usr/bin/node cx -> child_0123abcd,", child.format(rule=f"/usr/bin/x px -> {NAME}//child_0123abcd,"))
    assert check_profile_text(NAME, ok) is None
    other = child.format(rule="/usr/bin/x px -> varmor-other//child_0123abcd,")
    assert "transition" in (check_profile_text(NAME, profile(other)) or "")


def test_the_agent_reports_a_refused_profile_instead_of_loading_it() -> None:
    obj = armor_profile(NAME, "team-a", profile("/bin/sh ux,"))
    result = validate(obj)
    assert isinstance(result, Failed)
    assert "refused to load" in result.message
    assert "names another profile (or none)" in result.message


def test_names_that_reach_other_profiles_are_refused() -> None:
    """`sshd//evil` would replace a child of a host profile through the kernel interface."""
    for name in ("sshd//evil", "varmor-x//evil", "varmor-x/../y"):
        result = validate(armor_profile(name, "team-a", profile().replace(NAME, name)))
        assert isinstance(result, Failed), name


def test_what_raw_rules_may_hold_passes() -> None:
    """Everything the raw-rule grammar accepts must pass here too: a rule the leader writes
    and the agents refuse would leave that profile's update unapplied (UTF-8 paths, links)."""
    for rule in ("/srv/données/** r,", "audit owner link subset /a -> /b,", "link /x -> /y,"):
        assert check_profile_text(NAME, profile(rule)) is None, rule
