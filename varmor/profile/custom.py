"""A DefenseInDepth `customProfile`: a user-written profile, held to the raw-rule grammar.

Users paste profiles written for other tools, so the one `profile NAME [flags=(...)] {
... }` wrapper and the lines that usually come with it (`abi <...>,`,
`include <tunables/global>`, full-line comments) are accepted around the rules and
dropped: varmor writes its own header, abi, flags and `include <abstractions/base>`
(always there, so it may be written inside the block too), and the name is always the policy's
profile name (a custom name would attach nothing, or another policy's profile). What is
inside the block must pass `check_raw_rules`, the one validator of tenant-written rules,
so a custom profile can no more leave confinement than a raw rule can.
"""

from __future__ import annotations

import re

from varmor.profile.raw import CheckedRawRules, RawRuleError, check_raw_rules

_WRAPPER = re.compile(
    r"^\s*(?:profile\s+)?(?P<name>[A-Za-z0-9._-]+)?\s*(?:flags\s*=\s*\((?P<flags>[a-z_,\s]*)\)\s*)?\{(?P<body>.*)\}\s*$",
    re.DOTALL,
)
# What a profile file carries outside its block, dropped (varmor writes its own).
_PREAMBLE = re.compile(r"^\s*(?:abi\s+<[A-Za-z0-9/._-]+>\s*,|#?include\s+<tunables/global>|#(?!include).*)?\s*$")
# Inside the block: comments, and the include varmor's profiles always carry.
# What str.splitlines() breaks on besides "\n".
_OTHER_LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_DROPPED = re.compile(r"\s*(?:#(?!include).*|#?include\s+<abstractions/base>)\s*")


def custom_rules(text: str) -> CheckedRawRules:
    """The rules of a custom profile, validated, with warnings (e.g. a different name);
    RawRuleError when the text is neither bare rules nor one profile block of them."""
    text = text.replace("\r\n", "\n")
    stray = next((ch for ch in text if ch in _OTHER_LINE_BREAKS), None)
    if stray is not None:  # splitting on them would turn a comment's tail into a rule
        raise RawRuleError(f"customProfile holds a line break other than a newline: {stray!r}")
    lines = text.split("\n")
    kept: list[str] = []
    for line in lines:
        if kept or not _PREAMBLE.fullmatch(line):
            kept.append(line)
    body = "\n".join(kept)
    warnings: list[str] = []
    braces = re.sub(r"@\{[A-Za-z0-9_]+\}", "", body)  # variables are rules' business, not blocks
    wrapped = _WRAPPER.fullmatch(body) if re.search(r"[{}]\s*$", braces.strip()) else None
    if wrapped is not None:
        body = wrapped["body"]
        if wrapped["name"]:
            warnings.append(f"the profile name {wrapped['name']!r} is replaced by the policy's profile name")
        if wrapped["flags"] and "complain" in wrapped["flags"]:
            warnings.append("flags=(complain) is ignored: use defenseInDepth.allowViolations")
    elif "{" in braces or "}" in braces:
        raise RawRuleError("customProfile must be rules, or one `profile NAME { ... }` block of rules")
    checked = check_raw_rules("\n".join(line for line in body.split("\n") if not _DROPPED.fullmatch(line)))
    return CheckedRawRules(checked.rules, tuple(dict.fromkeys((*warnings, *checked.warnings))))
