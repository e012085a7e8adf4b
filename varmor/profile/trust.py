"""What the agent accepts as an ArmorProfile's text, checked before the kernel sees it (pure).
The leader's `compile_policy` runs the same check, so it never writes what agents refuse.

The agent loads whatever is in an ArmorProfile into the host's kernel, as root. Anyone who
can write ArmorProfiles (the leader's token, which sits on every node in the default
topology) must not be able to use that to confine host processes, leave confinement, or
read host files through the parser. So the agent re-checks the text against the shape the
builder (`varmor.profile.builder`) writes, independently of who wrote it, line by line and
token by token (never with a pattern that a crafted line could stretch):

* printable characters, tabs and newlines only: no control, format or separator
  character (no other line break the parser might honour, nothing a reviewer cannot see);
  printable non-ASCII (a UTF-8 path) is what raw rules may hold too;
* exactly one top-level profile, named exactly like the object, with no attachment and
  only the builder's flags (`complain` only when the object's mode says complain);
* child profiles only one level down, named `child_<hex>`; a header or a `}` is a line of
  its own, and any other brace sits inside a path glob (`/{a,b}`, `@{PROC}`);
* transitions only into this profile's own children: `cx -> child_...` in the parent and
  `px -> <name>//child_...` in a child; no other `->` but a mount rule's mount point (a
  path); no other exec mode naming a profile or none (`px`, `Pix`, `ux`, ...), no
  `change_profile`/`change_hat`, no hats, no `profile` inside a rule;
* includes only of the files the builder uses (`tunables/global`, `abstractions/base`, the
  node-local include), as whole lines: the parser runs as root, and an include of a host
  file would read it into an error message.

Why a structural re-check rather than re-rendering from the owning policy: the agent then
needs no read access to policies, and a leader and agents of different versions (a
rolling upgrade) still agree; the check is on what the text can do, not on how it was
made. The raw-rule grammar refuses all of this at admission too; this is the second wall.
"""

from __future__ import annotations

import re

from varmor.profile.node_local import NODE_LOCAL_INCLUDE
from varmor.profile.raw_words import MAX_RULE_LINE, is_profile_keyword

ALLOWED_INCLUDES = frozenset({"tunables/global", "abstractions/base", NODE_LOCAL_INCLUDE})
ALLOWED_FLAGS = frozenset({"attach_disconnected", "mediate_deleted"})
ABI_LINE = "abi <abi/3.0>,"
MAX_TEXT = 1024 * 1024
MAX_LINE = MAX_RULE_LINE

_CHILD = re.compile(r"child_[0-9a-f]{8,64}")
_TEXT = re.compile(r"[\x20-\x7e\n\t]*")  # the common case, checked fast
_INCLUDE = re.compile(r"#include <(?P<path>[A-Za-z0-9_./-]+)>")
_HEADER = re.compile(r"profile (?P<name>[^\s{}]+)(?: flags=\((?P<flags>[a-z_,]+)\))? \{")
_VARIABLE = re.compile(r"@\{[A-Za-z0-9_]+\}")
_PERMISSIONS = re.compile(r"[rwaklmixpPcCuUI]+")
_NAMING_EXEC = re.compile(r"[pPcCuU]")  # an exec mode that names a profile, or none
# Rule kinds whose words are not file permissions (`network ipx` is a protocol family).
_NOT_FILE_RULES = frozenset(
    {"network", "capability", "signal", "ptrace", "unix", "dbus", "mount", "remount", "umount", "pivot_root", "set"}
)
# `PATH cx -> child_…,` / `PATH px -> NAME//child_…,`: the only exec transitions written.
_TRANSITION = re.compile(r"(?P<path>/\S*) (?P<mode>[cp])x -> (?P<target>\S+),")
# `mount ... SOURCE -> MOUNTPOINT`, `link [subset] PATH -> TARGET`: an arrow that points at a
# path, not a profile.
_MOUNT_TARGET = re.compile(r"-> (?P<target>/\S*|@\{\S*),$")


def check_profile_text(name: str, text: str, mode: str = "enforce") -> str | None:
    """None when `text` is a profile varmor's builder could have written for `name` in
    `mode`; else why it is refused (for the ArmorNode failure message)."""
    if len(text) > MAX_TEXT:
        return f"the profile text is larger than {MAX_TEXT} bytes"
    if not _TEXT.fullmatch(text) and not all(ch in "\n\t" or ch.isprintable() for ch in text):
        return "the profile text holds characters other than printable ones, tabs and newlines"
    depth = 0
    tops = 0
    children: set[str] = set()
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if len(raw) > MAX_LINE:
            return f"line {number} is longer than {MAX_LINE} characters"
        if not line:
            continue
        problem: str | None
        if line.startswith("#"):
            problem = _check_hash_line(line)
        elif line == ABI_LINE:
            problem = None if depth == 0 else "an abi line inside a profile"
        elif line.startswith("profile "):
            header = _HEADER.fullmatch(line)
            if header is None:
                problem = "a profile header with an attachment or options varmor never writes"
            else:
                problem = _check_header(header, name, mode, depth, children)
                tops += depth == 0 and problem is None
                depth += 1
        elif line == "}":
            depth -= 1
            problem = "an unbalanced '}'" if depth < 0 else None
        elif depth == 0:
            problem = "a rule outside any profile"
        else:
            problem = _check_rule(line, name, depth)
        if problem is not None:
            return f"line {number}: {problem}"
    if depth != 0:
        return "unbalanced braces"
    if tops != 1:
        return f"expected exactly one top-level profile named {name!r}, found {tops}"
    return None


def _check_hash_line(line: str) -> str | None:
    """A comment, or one of the builder's includes; an include never hides in a comment."""
    include = _INCLUDE.fullmatch(line)
    if include is not None:
        return None if include["path"] in ALLOWED_INCLUDES else f"include of {include['path']!r}"
    if "include" in line:
        return f"{line!r} is an include varmor never writes"
    return None


def _check_header(header: re.Match[str], name: str, mode: str, depth: int, children: set[str]) -> str | None:
    flags = set((header["flags"] or "").split(",")) - {""}
    allowed = ALLOWED_FLAGS | ({"complain"} if mode == "complain" else set())
    if not flags <= allowed:
        return f"profile flags {sorted(flags - allowed)} are not the builder's for mode {mode!r}"
    if depth == 0:
        return None if header["name"] == name else f"top-level profile {header['name']!r} is not named {name!r}"
    if depth == 1 and _CHILD.fullmatch(header["name"]) and header["name"] not in children:
        children.add(header["name"])
        return None
    return f"profile {header['name']!r} is not a child varmor's builder writes"


def _check_rule(line: str, name: str, depth: int) -> str | None:
    if not line.endswith(","):
        return f"{line!r} is not one rule ending in ','"
    tokens = line.split()
    for token in tokens:
        word = token.rstrip(",")
        if is_profile_keyword(word):
            return f"{line!r}: {word!r} reaches other profiles or files"
        bare = _VARIABLE.sub("", token)
        if ("{" in bare or "}" in bare) and not _is_glob(token):
            return f"{line!r}: a brace outside a path glob"
    if line.count("->") > 1:
        return f"{line!r}: more than one arrow on a line"
    transition = _TRANSITION.fullmatch(line)
    if transition is not None:
        target, mode = transition["target"], transition["mode"]
        if depth == 1 and mode == "c" and _CHILD.fullmatch(target):
            return None
        child = target.removeprefix(f"{name}//")
        if depth == 2 and mode == "p" and child != target and _CHILD.fullmatch(child):
            return None
        return f"{line!r}: a transition to {target!r}, which is not a child of {name!r}"
    kind = next((t.rstrip(",") for t in tokens if t not in ("audit", "deny", "allow", "owner")), "")
    for token in tokens if kind not in _NOT_FILE_RULES else ():
        word = token.rstrip(",")
        if _PERMISSIONS.fullmatch(word) and "x" in word and _NAMING_EXEC.search(word):
            return f"{line!r}: exec mode {word!r} names another profile (or none)"
    if "->" in line and (kind not in ("mount", "link") or _MOUNT_TARGET.search(line) is None):
        return f"{line!r}: an arrow that is neither a mount point, a link target nor the builder's own transition"
    return None


def _is_glob(token: str) -> bool:
    """A path (or variable) whose braces are alternations and variables, balanced in it."""
    if not token.startswith(("/", "@{")):
        return False
    level = 0
    for ch in _VARIABLE.sub("", token):
        level += (ch == "{") - (ch == "}")
        if level < 0:
            return False
    return level == 0
