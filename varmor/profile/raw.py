"""Validation of user-supplied AppArmor rules (`appArmorRawRules`): untrusted input.

A raw rule is pasted into a generated profile, so anything that can leave its block is an
escape from the policy: a `}` closes the profile, `#include`/`include` pulls in other
policy, `profile`/`hat`/`^name` define new profiles, `change_profile`, `px`/`cx`/`ux` and
`-> name` switch to other (or no) profiles, `@{var}=` redefines variables the rest of the
profile relies on, `abi`/`alias` change how everything else is read.

The validator is an allow-list, not a block-list: each rule is split out (commas outside
quotes and parentheses) and must be one of the rule kinds that only ever describe the
profile it sits in (file, capability, network, mount family, ptrace, signal, unix, dbus,
link, rlimit). Everything else is refused with a message quoting the offending text. What
passes is then compiled by apparmor_parser like the rest of the profile, which catches
plain syntax errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_RAW_TEXT = 64 * 1024

QUALIFIERS = frozenset({"audit", "deny", "allow", "owner"})
# Keywords that define or switch profiles, or change how the rest of the file is read.
_FORBIDDEN_KEYWORDS = {
    "profile": "profile definitions are not allowed",
    "hat": "hat definitions are not allowed",
    "change_profile": "change_profile reaches other profiles",
    "change_hat": "change_hat reaches other profiles",
    "include": "includes are not allowed",
    "abi": "abi declarations are not allowed (varmor sets the ABI)",
    "alias": "alias rules are not allowed",
    "userns": "userns rules are not supported by the pinned ABI",
}
_PEER_KINDS = frozenset({"ptrace", "signal", "unix", "dbus"})
_MOUNT_KINDS = frozenset({"mount", "remount", "umount", "unmount", "pivot_root"})
_VAR_REF = re.compile(r"@\{[A-Za-z0-9_]+\}")
_PERMS = re.compile(r"^[rwaxlkmi]+$")
_TRANSITION_PERMS = re.compile(r"^[rwalkmiPpCcUux]+$")
_WORD = re.compile(r"^[a-z0-9_]+$")
_RLIMIT = re.compile(r"^set rlimit [a-z]+ <= [A-Za-z0-9]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class RawRuleError(ValueError):
    """A raw rule was refused; the message quotes the offending text."""


def _fail(reason: str, text: str) -> RawRuleError:
    snippet = text if len(text) <= 120 else text[:117] + "..."
    return RawRuleError(f"{reason}: {snippet!r}")


def _check_characters(text: str) -> None:
    """Characters that have block- or file-level meaning to the parser are refused
    outright, wherever they appear; this keeps the split below trivially correct."""
    if _CONTROL.search(text):
        raise _fail("control characters are not allowed", text)
    without_vars = _VAR_REF.sub("", text)
    for ch, why in (
        ("{", "braces are not allowed (no blocks or alternations)"),
        ("}", "braces are not allowed (no blocks or alternations)"),
        ("#", "'#' is not allowed (no comments or #include)"),
        ("\\", "backslash escapes are not allowed"),
        ("$", "boolean variables and conditionals are not allowed"),
    ):
        pos = without_vars.find(ch)
        if pos >= 0:
            raise _fail(why, _context(without_vars, pos))
    for match in re.finditer(r"[<>]", text):
        pos = match.start()
        if text[pos - 1 : pos + 1] == "->" or text[pos : pos + 2] == "<=":
            continue
        raise _fail("'<' and '>' are not allowed", _context(text, pos))
    for match in re.finditer(r"\^", text):
        if match.start() == 0 or text[match.start() - 1] != "[":
            raise _fail("'^' is only allowed in character classes like [^0-9]", text)


def _context(text: str, pos: int) -> str:
    start = text.rfind(",", 0, pos) + 1
    end = text.find(",", pos)
    return text[start : end if end >= 0 else len(text)].strip() or text


def _split_outside(text: str, is_separator: Callable[[str], bool]) -> tuple[list[str], str]:
    """Split `text` at separator characters outside quotes and parentheses: the parts
    before each separator, and what follows the last one. Raises on unbalanced quotes
    or parentheses (the one scanner for untrusted rule text)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise _fail("unbalanced ')'", "".join(current) + ch)
        elif not quoted and depth == 0 and is_separator(ch):
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    rest = "".join(current)
    if quoted:
        raise _fail("unterminated quote", rest.strip())
    if depth:
        raise _fail("unbalanced '('", rest.strip())
    return parts, rest


def split_rules(text: str) -> list[str]:
    """Split on commas outside quotes and parentheses; every rule must end with one."""
    rules, rest = _split_outside(text, lambda ch: ch == ",")
    if rest.strip():
        raise _fail("every rule must end with ','", rest.strip())
    return rules


def _tokens(rule: str) -> list[str]:
    """Whitespace-separated tokens, keeping quoted and parenthesised parts whole."""
    parts, rest = _split_outside(rule, str.isspace)
    return [part for part in (*parts, rest) if part]


def _is_path(token: str) -> bool:
    return token.startswith(("/", "@{", '"/', '"@{'))


def _check_perms(perms: str, denied: bool, rule: str) -> None:
    if not _PERMS.match(perms):
        if _TRANSITION_PERMS.match(perms):
            raise _fail(
                "exec transitions to other profiles or unconfined (p, c, u modes) are not "
                "allowed; use 'ix' or deny 'x'",
                rule,
            )
        raise _fail(f"invalid file permissions {perms!r}", rule)
    if "x" in perms and "i" not in perms and not denied:
        raise _fail("an allowed exec needs the 'ix' mode (inherit this profile)", rule)


def _check_file_rule(words: list[str], denied: bool, rule: str) -> None:
    """`PATH PERMS`, `PERMS PATH`, or `file [PERMS] [PATH]` in either order."""
    if "->" in words:
        raise _fail("named exec transitions ('->') are not allowed", rule)
    if words and words[0] == "file":
        words = words[1:]
        if not words:
            return
    if len(words) != 2:
        raise _fail("a file rule is a path and its permissions", rule)
    first, second = words
    if _is_path(first) and not _is_path(second):
        path, perms = first, second
    elif _is_path(second) and not _is_path(first):
        perms, path = first, second
    else:
        raise _fail("a file rule is a path and its permissions", rule)
    if "=" in path:
        raise _fail("variable definitions are not allowed", rule)
    _check_perms(perms, denied, rule)


def _check_rule(rule: str) -> str:
    words = _tokens(rule)
    normalized = " ".join(words)
    if not words:
        raise _fail("empty rule", rule.strip() or ",")
    qualifiers: list[str] = []
    while words and words[0] in QUALIFIERS:
        qualifiers.append(words.pop(0))
    if not words:
        raise _fail("a qualifier needs a rule", normalized)
    head = words[0]
    denied = "deny" in qualifiers
    if head in _FORBIDDEN_KEYWORDS:
        raise _fail(_FORBIDDEN_KEYWORDS[head], normalized)
    if head.startswith("^"):
        raise _fail("hat definitions are not allowed", normalized)
    if head.startswith(("@{", '"@{')) and ("=" in head or (len(words) > 1 and "=" in words[1])):
        raise _fail("variable definitions are not allowed", normalized)
    if head == "file" or _is_path(head) or (_PERMS.match(head) and len(words) == 2):
        _check_file_rule(words, denied, normalized)
    elif head == "capability" or head == "network":
        bad = [w for w in words[1:] if not _WORD.match(w)]
        if bad:
            raise _fail(f"unexpected {bad[0]!r} in a {head} rule", normalized)
    elif head in _MOUNT_KINDS:
        if "->" in words and head not in ("mount", "remount"):
            raise _fail(f"'->' in a {head} rule switches profiles; not allowed", normalized)
    elif head in _PEER_KINDS:
        if "->" in words:
            raise _fail("'->' is not allowed here", normalized)
    elif head == "link":
        if len(words) < 4 or words[-2] != "->":
            raise _fail("a link rule is 'link [subset] SOURCE -> TARGET'", normalized)
    elif head == "set":
        if qualifiers or not _RLIMIT.match(normalized):
            raise _fail("only 'set rlimit NAME <= VALUE' is allowed", normalized)
    else:
        raise _fail("unsupported rule kind", normalized)
    return normalized


def validate_raw_rules(text: str) -> list[str]:
    """Return the rules in `text`, whitespace-normalised and without their trailing
    commas, or raise RawRuleError quoting the first offending rule."""
    if not isinstance(text, str):
        raise RawRuleError(f"raw rules must be a string, not {type(text).__name__}")
    if len(text) > MAX_RAW_TEXT:
        raise RawRuleError(f"raw rules are limited to {MAX_RAW_TEXT} characters")
    _check_characters(text)
    rules = [_check_rule(rule) for rule in split_rules(text)]
    if not rules:
        raise RawRuleError("no rules given")
    return rules
