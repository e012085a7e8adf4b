"""The raw-rule fuzzer's long run: N generated texts against a validator, and how many
escapes each validator lets through.

    .venv/bin/python bench/fuzz_raw_rules.py --cases 100000 [--validator new|old|both]

The generator and the compiled-output oracle are those of
`tests/unit/test_profile_raw_fuzz.py`. Every text is validated; the distinct accepted
rule sets are compiled (container-wide and for an executable target, against a reference
with the raw rules replaced by placeholders) when they look like a transition, a profile
or an include (`suspicious`), plus a random sample of the rest (`--sample`). An escape is
a compiled profile whose profile names, exec-transition table or preprocessed text holds
something the builder did not write.

`--validator old` runs the same generator against the previous validator (commit 3d3e08f)
(kept below, verbatim, for this comparison only); it must rediscover the known escapes.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.unit.test_profile_raw_fuzz import (  # noqa: E402
    CURRENT,
    accepted_rules,
    build_case,
    generate,
    judge,
    suspicious,
)

# ---------------------------------------------------------------------------------------
# THE PREVIOUS VALIDATOR: varmor/profile/raw.py as it was before the allow-list grammar (git show
# 3d3e08f:varmor/profile/raw.py), kept verbatim below only so this fuzzer can show what
# it let through. Not used anywhere else.
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# END OF THE PREVIOUS VALIDATOR
# ---------------------------------------------------------------------------------------

VALIDATORS: dict[str, Callable[[str], Sequence[str]]] = {"new": CURRENT, "old": validate_raw_rules}


def _judge_chunk(chunk: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], bool, list[str]]]:
    verdicts = judge([build_case(rules) for rules in chunk])
    return [(rules, ok, problems) for rules, (ok, problems) in zip(chunk, verdicts, strict=True)]


KINDS = ["profile", "transition", "preprocessed-only"]


def _kind(problem: str) -> str:
    """What an escape is: a new profile, a transition, or only preprocessed text."""
    if "profiles" in problem:
        return "profile"
    if "transition" in problem:
        return "transition"
    return "preprocessed-only"


def _examples(escapes: list[tuple[tuple[str, ...], list[str]]]) -> list[tuple[str, list[str], str]]:
    """Up to five escapes of each kind."""
    out: list[tuple[str, list[str], str]] = []
    for kind in ("profile", "transition", "preprocessed-only"):
        mine = [(r, p) for r, p in escapes if min(map(_kind, p), key=KINDS.index) == kind]
        out += [(kind, list(rules), problems[0][:240]) for rules, problems in mine[:5]]
    return out


def run(name: str, cases: int, seed: int, sample: int, jobs: int, max_compile: int) -> dict[str, object]:
    validate = VALIDATORS[name]
    rng = random.Random(seed)
    start = time.monotonic()
    accepted = 0
    distinct: dict[tuple[str, ...], str] = {}
    for _ in range(cases):
        text = generate(rng)
        rules = accepted_rules(validate, text)
        if rules:
            accepted += 1
            distinct.setdefault(tuple(rules), text)
    text_seconds = time.monotonic() - start
    flagged = [r for r in distinct if suspicious(r)]
    rest = sorted(set(distinct) - set(flagged))
    picker = random.Random(seed + 1)
    if len(flagged) > max_compile:
        flagged = picker.sample(flagged, max_compile)
    chosen = flagged + picker.sample(rest, min(sample, len(rest)))
    chunks = [chosen[i : i + 20] for i in range(0, len(chosen), 20)]
    start = time.monotonic()
    results: list[tuple[tuple[str, ...], bool, list[str]]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for part in pool.map(_judge_chunk, chunks):
            results += part
    compile_seconds = time.monotonic() - start
    escapes = [(rules, problems) for rules, ok, problems in results if problems]
    kinds = Counter(min(map(_kind, problems), key=KINDS.index) for _, problems in escapes)
    return {
        "validator": name,
        "cases": cases,
        "accepted": accepted,
        "distinct_accepted_sets": len(distinct),
        "suspicious_sets": sum(1 for r in distinct if suspicious(r)),
        "suspicious_compiled": len(flagged),
        "sampled_other_sets": len(chosen) - len(flagged),
        "compiled_sets": len(results),
        "compiled_ok": sum(1 for _, ok, _ in results if ok),
        "escaping_sets": len(escapes),
        "escape_kinds": dict(kinds),
        "examples": _examples(escapes),
        "text_seconds": round(text_seconds, 1),
        "compile_seconds": round(compile_seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--validator", choices=["new", "old", "both"], default="both")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--sample", type=int, default=500, help="other accepted sets compiled besides the suspicious ones")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-compile", type=int, default=1_000_000, help="cap on the suspicious sets compiled")
    args = ap.parse_args()
    names = ["old", "new"] if args.validator == "both" else [args.validator]
    for name in names:
        report = run(name, args.cases, args.seed, args.sample, args.jobs, args.max_compile)
        examples = report.pop("examples")
        for key, value in report.items():
            print(f"{name:>4} {key:<24} {value}", flush=True)
        for example in examples:  # type: ignore[attr-defined]
            print(f"{name:>4} escape: {example}", flush=True)


if __name__ == "__main__":
    main()
