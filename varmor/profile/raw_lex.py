"""Lexing of raw AppArmor rules (untrusted input): characters, rules, tokens.

Why a separate pass before the grammar (varmor.profile.raw): the characters that have
block- or file-level meaning to apparmor_parser (`{ } # \\ $ !`, `<` and `>` outside
`<=` and `->`) and every character a reader cannot see (control, bidi and other Unicode
format characters, odd spaces) are refused wherever they appear, so the split into
rules and tokens below is trivially the same split the parser makes, and what a
reviewer reads in the policy is what the parser reads.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

MAX_RAW_TEXT = 64 * 1024
VAR = r"@\{[A-Za-z][A-Za-z0-9_]*\}"
_VAR_REF = re.compile(VAR)
_WHITESPACE = frozenset("\t\n\r ")
_REFUSED = (
    ("{", "braces are not allowed (no blocks or alternations)"),
    ("}", "braces are not allowed (no blocks or alternations)"),
    ("#", "'#' is not allowed (no comments or #include)"),
    ("\\", "backslash escapes are not allowed"),
    ("$", "boolean variables and conditionals are not allowed"),
    ("!", "'!' is not allowed"),
    ("`", "'`' is not allowed"),
)


class RawRuleError(ValueError):
    """A raw rule was refused; the message quotes the offending text."""


def fail(reason: str, text: str) -> RawRuleError:
    snippet = text if len(text) <= 120 else text[:117] + "..."
    return RawRuleError(f"{reason}: {snippet!r}")


def _context(text: str, pos: int) -> str:
    start = text.rfind(",", 0, pos) + 1
    end = text.find(",", pos)
    return text[start : end if end >= 0 else len(text)].strip() or text


def check_characters(text: str) -> None:
    """Refuse every character outside the allow-list: printable characters and the
    four ASCII whitespaces, minus those with block- or file-level meaning."""
    for pos, ch in enumerate(text):
        if ch in _WHITESPACE or ch.isprintable():
            continue
        if unicodedata.category(ch) == "Cf":
            why = f"Unicode format characters (bidi controls, U+{ord(ch):04X}) are not allowed"
        else:
            why = f"control characters and other invisible ones (U+{ord(ch):04X}) are not allowed"
        raise fail(why, _context(text, pos))
    without_vars = _VAR_REF.sub("", text)
    for ch, why in _REFUSED:
        pos = without_vars.find(ch)
        if pos >= 0:
            raise fail(why, _context(without_vars, pos))
    for match in re.finditer(r"[<>]", text):
        pos = match.start()
        if text[pos - 1 : pos + 1] == "->" or text[pos : pos + 2] == "<=":
            continue
        raise fail("'<' and '>' are not allowed", _context(text, pos))
    for match in re.finditer(r"\^", text):
        if match.start() == 0 or text[match.start() - 1] != "[":
            raise fail("'^' is only allowed in character classes like [^0-9]", _context(text, match.start()))


def _split_outside(text: str, is_separator: Callable[[str], bool]) -> tuple[list[str], str]:
    """Split `text` at separator characters outside quotes and parentheses: the parts
    before each separator, and what follows the last one. Raises on unbalanced quotes
    or parentheses, and on nested parentheses (no rule kind varmor accepts has them)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
            if depth > 1:
                raise fail("nested parentheses are not allowed", "".join(current) + ch)
        elif not quoted and ch == ")":
            depth -= 1
            if depth < 0:
                raise fail("unbalanced ')'", "".join(current) + ch)
        elif not quoted and depth == 0 and is_separator(ch):
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    rest = "".join(current)
    if quoted:
        raise fail("unterminated quote", rest.strip())
    if depth:
        raise fail("unbalanced '('", rest.strip())
    return parts, rest


def split_rules(text: str) -> list[str]:
    """Split on commas outside quotes and parentheses; every rule must end with one."""
    rules, rest = _split_outside(text, lambda ch: ch == ",")
    if rest.strip():
        raise fail("every rule must end with ','", rest.strip())
    return rules


def tokens(rule: str) -> list[str]:
    """Whitespace-separated tokens, keeping quoted and parenthesised parts whole; the
    whitespace inside a parenthesised list is collapsed to single spaces."""
    parts, rest = _split_outside(rule, str.isspace)
    found = [part for part in (*parts, rest) if part]
    return [re.sub(r"\s+", " ", tok) if "(" in tok and '"' not in tok else tok for tok in found]


def list_items(token: str) -> list[str]:
    """The items of a `(a, b c)` list (commas and/or spaces between them)."""
    return [item for item in re.split(r"[\s,]+", token[1:-1]) if item]
