"""Validation of user-supplied AppArmor rules (`appArmorRawRules`): untrusted input.

A raw rule is pasted into a generated profile, so anything that can leave its block or
its profile is an escape from the policy: a `}` closes the profile, `include` pulls in
other policy, `profile`/`hat`/`^name` define new profiles, `change_profile`, the
`px`/`cx`/`ux` exec modes and `-> name` (after an exec rule or a `pivot_root`) move the
process to another profile or to none (`unconfined`), `@{var}=` redefines variables the
rest of the profile relies on, `abi`/`alias` change how everything else is read.

So the check is an allow-list grammar, token by token, never a deny-list of bad words:
the characters are checked first (varmor.profile.raw_lex), each rule is split out
(commas outside quotes and parentheses), its qualifiers (`audit`, then `allow`/`deny`,
then `owner`) are taken off, and what remains must be exactly one of these forms, every
token of the expected class:

    [file] PATH PERMS | [file] PERMS PATH | file     PERMS from r w a l k m x i; an allowed
                                                     x only as ix (stays in this profile)
    capability [CAP ...]                             CAP a capability of the pinned ABI
    network [WORD ...]                               families, types, tcp/udp/icmp
    mount [CONDS] [SOURCE] [-> PATH]                 CONDS: fstype=, vfstype=, options=,
    remount [CONDS] [PATH] | umount [CONDS] [PATH]          options in (...)
    pivot_root [oldroot=PATH] [PATH]                 no `->`: its target is a profile
    ptrace [ACCESS] [peer=LABEL]
    signal [ACCESS] [set=SIGNALS] [peer=LABEL]
    unix [ACCESS] [type=] [protocol=] [addr=] [label=] [attr=] [opt=] [peer=(label= addr=)]
    link [subset] PATH -> PATH
    set rlimit NAME <= VALUE                         no qualifiers

`->` appears only in `mount` and `link`, standing alone between two paths: there it
names a mountpoint or a link target, never a profile. dbus rules are refused: the
pinned ABI has no dbus mediation, so the compile check (`--Werror=rule-not-enforced`)
refused them anyway (as it refuses unix rules with an address, label or peer).
What passes is then compiled by apparmor_parser like the rest of the profile, which
catches plain syntax errors. An allowed ptrace or signal rule whose peer may be
`unconfined` (named, globbed, a variable, or no peer at all) is accepted with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from varmor.profile.raw_lex import (
    MAX_RAW_TEXT,
    VAR,
    RawRuleError,
    check_characters,
    fail,
    list_items,
    split_rules,
    tokens,
)
from varmor.profile.raw_words import (
    ACCESS,
    CAPS,
    MAX_RULE_LINE,
    MOUNT_OPTIONS,
    NETWORK,
    RLIMITS,
    SIGNALS,
    SOCKET_TYPES,
    is_profile_keyword,
)

__all__ = ["MAX_RAW_TEXT", "CheckedRawRules", "RawRuleError", "check_raw_rules", "validate_raw_rules"]

QUALIFIERS = {"audit": 0, "allow": 1, "deny": 1, "owner": 2}
_FORBIDDEN_KEYWORDS = {
    "profile": "profile definitions are not allowed",
    "hat": "hat definitions are not allowed",
    "change_profile": "change_profile reaches other profiles",
    "change_hat": "change_hat reaches other profiles",
    "include": "includes are not allowed",
    "abi": "abi declarations are not allowed (varmor sets the ABI)",
    "alias": "alias rules are not allowed",
    "userns": "userns rules are not supported by the pinned ABI",
    "dbus": "dbus rules are not enforced by the pinned ABI",
}
_CHARS = r"[A-Za-z0-9_./*?+:~%\-\[\]^]|[^\x00-\x7f]"
_PATH = re.compile(rf"(?:/|{VAR})(?:{_CHARS}|{VAR})*")
_QUOTED_PATH = re.compile(rf'"(?:/|{VAR})(?:{_CHARS}| |{VAR})*"')
_LABEL = re.compile(rf"(?:{_CHARS}|{VAR})+")
_ADDR = re.compile(rf"@?(?:{_CHARS}|{VAR})+")
_UNIX_PEER = re.compile(rf"label=(?:{_LABEL.pattern})|addr=(?:{_ADDR.pattern})")
RULE_INDENT_MARGIN = 16  # the builder indents a rule (two levels in a child profile) and adds its comma
_DEVICE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:/-]*")
_PERMS = re.compile(r"[rwaxlkmi]+")
_TRANSITION_PERMS = re.compile(r"[rwalkmiPpCcUux]+")
_WORD = re.compile(r"[a-z0-9_]+")
_FSTYPE = re.compile(r"[A-Za-z0-9_.]+")
_RLIMIT_VALUE = re.compile(r"-?[0-9]+[A-Za-z]*|infinity")
_MOUNT_KINDS = ("mount", "remount", "umount", "unmount")
_ARROW_WHY = {
    "file": "named exec transitions ('->') are not allowed",
    "pivot_root": "'->' in a pivot_root rule switches profiles; not allowed",
}


@dataclass(frozen=True)
class CheckedRawRules:
    """The accepted rules (normalised, no trailing commas) and what the user should be
    told about them."""

    rules: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def is_path(token: str) -> bool:
    return bool(_PATH.fullmatch(token) or _QUOTED_PATH.fullmatch(token))


def _looks_like_path(token: str) -> bool:
    return token.startswith(("/", "@{", '"/', '"@{'))


class _Rule:
    """One rule being checked: its tokens after the qualifiers, and a cursor."""

    def __init__(self, words: list[str], normalized: str, denied: bool) -> None:
        self.words = words
        self.text = normalized
        self.denied = denied
        self.pos = 1
        self.warnings: list[str] = []

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None

    def take(self) -> str:
        word = self.words[self.pos]
        self.pos += 1
        return word

    def unexpected(self, why: str = "") -> RawRuleError:
        token = self.peek() or ""
        return fail(why or f"unexpected {token!r} in a {self.words[0]} rule", self.text)

    def end(self) -> None:
        if self.peek() is not None:
            raise self.unexpected()

    def path(self, what: str) -> str:
        token = self.peek()
        if token is None or not is_path(token):
            raise self.unexpected(f"{what} must be an absolute path, not {token!r}")
        return self.take()


def _values(rule: _Rule, value: str, allowed: frozenset[str] | re.Pattern[str], key: str) -> list[str]:
    """A condition's value: one item, or a `(list)` of items, each from `allowed`."""
    items = list_items(value) if value.startswith("(") and value.endswith(")") else [value]
    # `set=("exists")`: quotes are read by the parser as nothing but quotes
    items = [item[1:-1] if len(item) > 2 and item[0] == item[-1] == '"' else item for item in items]
    for item in items or [""]:
        ok = item in allowed if isinstance(allowed, frozenset) else bool(allowed.fullmatch(item))
        if not ok:
            raise fail(f"{item!r} is not a valid {key} value in a {rule.words[0]} rule", rule.text)
    return items


def _conds(rule: _Rule, allowed: dict[str, frozenset[str] | re.Pattern[str]]) -> dict[str, list[str]]:
    """`key=value`, `key=(list)` or `key in (list)` conditions, each key at most once."""
    found: dict[str, list[str]] = {}
    while (token := rule.peek()) is not None:
        if "=" in token:
            key, _, value = token.partition("=")
        elif token in allowed and rule.words[rule.pos + 1 : rule.pos + 2] == ["in"]:
            key, value = token, "".join(rule.words[rule.pos + 2 : rule.pos + 3])
            if not (value.startswith("(") and value.endswith(")")):
                raise rule.unexpected(f"'{key} in' needs a (list)")
            rule.pos += 2
        else:
            break
        if key not in allowed:
            raise rule.unexpected(f"unknown condition {key!r} in a {rule.words[0]} rule")
        if key in found:
            raise rule.unexpected(f"condition {key!r} given twice")
        if key == "peer" and value.startswith("(") != (rule.words[0] == "unix"):
            why = "a unix peer is a (label=... addr=...) list" if rule.words[0] == "unix" else "a peer is one label"
            raise rule.unexpected(why + f", not {value!r}")
        found[key] = _values(rule, value, allowed[key], key)
        rule.pos += 1
    return found


def _file_rule(rule: _Rule) -> None:
    """`PATH PERMS`, `PERMS PATH`, or `file [PERMS] [PATH]` in either order."""
    words = rule.words[1:] if rule.words[0] == "file" else rule.words
    if words == []:
        return
    if len(words) != 2:
        raise fail("a file rule is a path and its permissions", rule.text)
    first, second = words
    if _looks_like_path(first) and not _looks_like_path(second):
        path, perms = first, second
    elif _looks_like_path(second) and not _looks_like_path(first):
        perms, path = first, second
    else:
        raise fail("a file rule is a path and its permissions", rule.text)
    if "=" in path:
        raise fail("variable definitions are not allowed", rule.text)
    if not is_path(path):
        raise fail(f"{path!r} is not a path varmor accepts (letters, digits, globs, @{{VAR}})", rule.text)
    if not _PERMS.fullmatch(perms):
        if _TRANSITION_PERMS.fullmatch(perms):
            raise fail(
                "exec transitions to other profiles or unconfined (p, c, u modes) are not "
                "allowed; use 'ix' or deny 'x'",
                rule.text,
            )
        raise fail(f"invalid file permissions {perms!r}", rule.text)
    if "x" in perms and "i" not in perms and not rule.denied:
        raise fail("an allowed exec needs the 'ix' mode (inherit this profile)", rule.text)
    if "i" in perms and ("x" not in perms or rule.denied):
        raise fail("'i' goes with an allowed 'x' only ('ix'; a deny rule takes plain 'x')", rule.text)


def _words_rule(rule: _Rule, allowed: frozenset[str] | re.Pattern[str]) -> None:
    while (token := rule.peek()) is not None:
        ok = token in allowed if isinstance(allowed, frozenset) else bool(allowed.fullmatch(token))
        if not ok:
            raise rule.unexpected()
        rule.pos += 1


def _mount_rule(rule: _Rule) -> None:
    _conds(rule, {"fstype": _FSTYPE, "vfstype": _FSTYPE, "options": MOUNT_OPTIONS})
    if rule.words[0] != "mount":
        if rule.peek() is not None:
            rule.path("the mountpoint")
        rule.end()
        return
    source = rule.peek()
    if source is not None and source != "->":
        if not (is_path(source) or _DEVICE.fullmatch(source)) or is_profile_keyword(source):
            raise rule.unexpected(f"the mount source must be a path or a device name, not {source!r}")
        rule.pos += 1
    if rule.peek() == "->":
        rule.pos += 1
        rule.path("the mountpoint after '->'")
    rule.end()


def _pivot_root_rule(rule: _Rule) -> None:
    _conds(rule, {"oldroot": _PATH})
    if rule.peek() is not None:
        rule.path("the new root")
    rule.end()


OWN_PEER = "@{profile_name}"
_GLOB_OR_VAR = re.compile(r"[*?\[]|@\{")


def _peer_problem(kind: str, peer: str | None) -> tuple[str | None, str | None]:
    """(refusal, warning) for an allow rule's peer. Only the rule's own profile may be named
    freely: a glob or variable can match other tenants' profiles and unconfined processes
    (and matching one is costly to decide), and `varmor-*` names are other policies'."""
    if peer == OWN_PEER:
        return None, None
    if peer is not None and _GLOB_OR_VAR.search(peer):
        return f"a {kind} peer glob or variable ({peer!r}) can match other tenants' profiles: name the peer", None
    if peer is not None and peer.startswith("varmor-"):
        return f"{peer!r} is another varmor profile (another policy's); name this profile as {OWN_PEER}", None
    if kind == "ptrace":
        return f"ptrace reaches into other processes: only this profile's own (peer={OWN_PEER}) may be allowed", None
    who = "no peer, so any process" if peer is None else f"peer {peer!r}"
    return None, (
        f"allows {kind} with {who}, including processes outside any profile or in other containers' "
        "profiles (the host's, if the pod shares the host PID namespace)"
    )


def _peer_rule(rule: _Rule) -> None:
    kind = rule.words[0]
    access = rule.peek()
    if access is not None and "=" not in access:
        _values(rule, access, ACCESS[kind], "access")
        rule.pos += 1
    allowed: dict[str, frozenset[str] | re.Pattern[str]] = {"peer": _LABEL}
    if kind == "signal":
        allowed["set"] = SIGNALS
    conds = _conds(rule, allowed)
    rule.end()
    if rule.denied:
        return
    peers: list[str | None] = [*conds["peer"]] if conds.get("peer") else [None]
    for peer in peers:
        refusal, warning = _peer_problem(kind, peer)
        if refusal is not None:
            raise fail(refusal, rule.text)
        if warning is not None:
            rule.warnings.append(f"raw rule {rule.text!r} {warning}")


def _unix_rule(rule: _Rule) -> None:
    """unix rules match sockets, never move a process; the pinned ABI enforces only what
    `network unix` can say, and the compile check refuses the rest (addr=, label=, peer=)."""
    access = rule.peek()
    if access is not None and "=" not in access:
        _values(rule, access, ACCESS["unix"], "access")
        rule.pos += 1
    conds: dict[str, frozenset[str] | re.Pattern[str]] = {"type": SOCKET_TYPES, "protocol": _WORD}
    _conds(rule, conds | {"addr": _ADDR, "label": _LABEL, "attr": _WORD, "opt": _WORD, "peer": _UNIX_PEER})
    rule.end()


def _link_rule(rule: _Rule) -> None:
    if rule.peek() == "subset":
        rule.pos += 1
    rule.path("the link")
    if rule.peek() != "->":
        raise fail("a link rule is 'link [subset] SOURCE -> TARGET'", rule.text)
    rule.pos += 1
    rule.path("the link target")
    rule.end()


def _rlimit_rule(rule: _Rule, qualifiers: list[str]) -> None:
    words = rule.words
    ok = len(words) == 5 and words[1] == "rlimit" and words[3] == "<="
    if qualifiers or not ok or words[2] not in RLIMITS or not _RLIMIT_VALUE.fullmatch(words[4]):
        raise fail("only 'set rlimit NAME <= VALUE' is allowed", rule.text)


def _qualifiers(words: list[str], normalized: str) -> list[str]:
    found: list[str] = []
    while words and words[0] in QUALIFIERS:
        word = words.pop(0)
        if found and QUALIFIERS[word] <= QUALIFIERS[found[-1]]:
            raise fail("qualifiers go once each, in the order audit, allow|deny, owner", normalized)
        found.append(word)
    if not words:
        raise fail("a qualifier needs a rule", normalized)
    return found


def _kind(words: list[str]) -> str:
    head = words[0]
    if head == "file" or _looks_like_path(head) or (_PERMS.fullmatch(head) and len(words) == 2):
        return "file"
    return "mount" if head in _MOUNT_KINDS else head


def _check_rule(text: str) -> tuple[str, list[str]]:
    words = tokens(text)
    normalized = " ".join(words)
    if not words:
        raise fail("empty rule", text.strip() or ",")
    qualifiers = _qualifiers(words, normalized)
    head = words[0]
    if head in _FORBIDDEN_KEYWORDS:
        raise fail(_FORBIDDEN_KEYWORDS[head], normalized)
    if head.startswith(("@{", '"@{')) and ("=" in head or (len(words) > 1 and "=" in words[1])):
        raise fail("variable definitions are not allowed", normalized)
    kind = _kind(words)
    arrows = [w for w in words if "->" in w]
    if arrows and kind not in ("mount", "link"):
        raise fail(_ARROW_WHY.get(kind, "'->' is not allowed here"), normalized)
    if any(w != "->" for w in arrows):
        raise fail("'->' must stand alone, between two paths", normalized)
    if "owner" in qualifiers and kind not in ("file", "link"):
        raise fail("'owner' applies only to file and link rules", normalized)
    rule = _Rule(words, normalized, "deny" in qualifiers)
    if kind == "file":
        _file_rule(rule)
    elif kind == "capability":
        _words_rule(rule, CAPS)
    elif kind == "network":
        _words_rule(rule, NETWORK)
    elif kind == "mount":
        _mount_rule(rule)
    elif kind == "pivot_root":
        _pivot_root_rule(rule)
    elif kind == "unix":
        _unix_rule(rule)
    elif kind in ACCESS:
        _peer_rule(rule)
    elif kind == "link":
        _link_rule(rule)
    elif kind == "set":
        _rlimit_rule(rule, qualifiers)
    else:
        raise fail("unsupported rule kind", normalized)
    return normalized, rule.warnings


def check_raw_rules(text: str) -> CheckedRawRules:
    """The rules in `text`, whitespace-normalised and without their trailing commas,
    with warnings; or RawRuleError quoting the first offending rule."""
    if not isinstance(text, str):
        raise RawRuleError(f"raw rules must be a string, not {type(text).__name__}")
    if len(text) > MAX_RAW_TEXT:
        raise RawRuleError(f"raw rules are limited to {MAX_RAW_TEXT} characters")
    check_characters(text)
    rules: list[str] = []
    warnings: list[str] = []
    for raw in split_rules(text):
        rule, found = _check_rule(raw)
        if len(rule) + RULE_INDENT_MARGIN > MAX_RULE_LINE:  # the agents refuse a longer line
            raise RawRuleError(
                f"a rule is limited to {MAX_RULE_LINE - RULE_INDENT_MARGIN} characters: {rule[:80]!r}..."
            )
        rules.append(rule)
        warnings += found
    if not rules:
        raise RawRuleError("no rules given")
    return CheckedRawRules(tuple(rules), tuple(dict.fromkeys(warnings)))


def validate_raw_rules(text: str) -> list[str]:
    """The accepted rules of `text` (check_raw_rules without the warnings)."""
    return list(check_raw_rules(text).rules)
