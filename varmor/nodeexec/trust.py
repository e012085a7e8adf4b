"""What the agent accepts as an ArmorProfile's text, checked before the kernel sees it (pure).

The agent loads whatever is in an ArmorProfile into the host's kernel, as root. Anyone who
can write ArmorProfiles (the leader's token, which sits on every node in the default
topology) must not be able to use that to confine host processes, leave confinement, or
read host files through the parser. So the agent re-checks the text against the shape the
builder (`varmor.profile.builder`) writes, independently of who wrote it:

* exactly one top-level profile, named exactly like the object, with no attachment (a
  path after the name would confine every host process that executes it);
* child profiles only one level down, named `child_<hex>` (loaded as `<name>//child_...`);
* transitions only into this profile's own children: `cx -> child_...` in the parent and
  `px -> <name>//child_...` in a child; no other `->` but a mount rule's mount point (a
  path), so no `pivot_root -> x`; no
  `change_profile`/`change_hat`, no hats, and no unconfined exec modes (`ux`, `pux`, ...);
* includes only of the files the builder uses (`tunables/global`, `abstractions/base`, the
  node-local include): the parser runs as root, and `#include "/etc/shadow"` would read
  host files into an error message.

Why a structural re-check rather than re-rendering from the owning policy: the agent then
needs no read access to policies, and a leader and agents of different versions (a
rolling upgrade) still agree; the check is on what the text can do, not on how it was
made. The raw-rule grammar refuses all of this at admission too; this is the second wall.
"""

from __future__ import annotations

import re

from varmor.profile.node_local import NODE_LOCAL_INCLUDE

ALLOWED_INCLUDES = frozenset({"tunables/global", "abstractions/base", NODE_LOCAL_INCLUDE})
MAX_TEXT = 1024 * 1024

_CHILD = r"child_[0-9a-f]{8,64}"
_COMMENT = re.compile(r"^\s*#(?!include\b)")
_INCLUDE = re.compile(r"^\s*#?include\b(?P<rest>.*)$")
_INCLUDE_TARGET = re.compile(r"^\s*(?:if exists\s+)?<(?P<path>[A-Za-z0-9_./-]+)>\s*$")
_PROFILE = re.compile(r"^\s*profile\s+(?P<name>\S+)(?P<rest>[^{]*)\{\s*$")
_FLAGS = re.compile(r"^\s*(?:flags=\([a-z_,]+\))?\s*$")
# A permission token (not a path) with an unconfined exec mode: ux, Ux, pux, cUx, rUx ...
_UNCONFINED_EXEC = re.compile(r"^[rwalkmiPpCc]*[Uu][i]?x[rwalkmi]*$")
_FORBIDDEN_WORDS = re.compile(r"(?<![A-Za-z0-9_@/.-])(change_profile|change_hat|hat)(?![A-Za-z0-9_])")
# `mount ... SOURCE -> MOUNTPOINT`: the arrow of a mount rule points at a path, not a profile.
_MOUNT = re.compile(r"^\s*(?:(?:audit|deny|allow)\s+)*mount\b.*->\s*(?P<target>[^\s,]+)\s*,\s*$")
_TRANSITION = re.compile(r"^\s*(?:audit\s+)?(?:allow\s+)?\S+\s+(?P<mode>[cCpP])x\s+->\s+(?P<target>\S+?)\s*,\s*$")


def check_profile_text(name: str, text: str) -> str | None:
    """None when `text` is a profile varmor's builder could have written for `name`;
    else why it is refused (for the ArmorNode failure message)."""
    if len(text) > MAX_TEXT:
        return f"the profile text is larger than {MAX_TEXT} bytes"
    if "\x00" in text:
        return "the profile text contains a NUL byte"
    depth = 0
    top: list[str] = []
    children: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if _COMMENT.match(line) or not line.strip():
            continue
        where = f"line {number}"
        include = _INCLUDE.match(line)
        if include is not None:
            target = _INCLUDE_TARGET.match(include["rest"])
            if target is None or target["path"] not in ALLOWED_INCLUDES:
                return f"{where}: include of {include['rest'].strip()!r} is not one the builder writes"
            continue
        profile = _PROFILE.match(line)
        if profile is not None:
            if not _FLAGS.match(profile["rest"]):
                return f"{where}: profile {profile['name']!r} has an attachment or unknown options"
            if depth == 0:
                if profile["name"] != name:
                    return f"{where}: top-level profile {profile['name']!r} is not named {name!r}"
                top.append(profile["name"])
            elif depth == 1 and re.fullmatch(_CHILD, profile["name"]):
                children.append(profile["name"])
            else:
                return f"{where}: profile {profile['name']!r} is not a child varmor's builder writes"
            depth += 1
            continue
        if line.strip() == "}":
            depth -= 1
            if depth < 0:
                return f"{where}: unbalanced '}}'"
            continue
        if line.rstrip().endswith("{"):
            return f"{where}: a block that is not a varmor profile (hats and conditionals are not written)"
        problem = _check_rule(line, name, depth)
        if problem is not None:
            return f"{where}: {problem}"
    if depth != 0:
        return "unbalanced braces"
    if len(top) != 1:
        return f"expected exactly one top-level profile named {name!r}, found {len(top)}"
    if len(set(children)) != len(children):
        return "a child profile is defined twice"
    return None


def _check_rule(line: str, name: str, depth: int) -> str | None:
    if depth == 0 and not line.startswith("abi <abi/"):
        return "a rule outside any profile"
    if _FORBIDDEN_WORDS.search(line):
        return f"{line.strip()!r} reaches another profile"
    if any(_UNCONFINED_EXEC.match(token) for token in re.split(r"[\s,]+", line)):
        return f"{line.strip()!r} executes unconfined"
    if "->" not in line:
        return None
    if line.count("->") > 1:
        return f"{line.strip()!r}: more than one arrow on a line"
    mount = _MOUNT.match(line)
    if mount is not None and mount["target"].startswith(("/", "@{")):
        return None
    transition = _TRANSITION.match(line)
    if transition is None:
        return f"{line.strip()!r}: a transition outside an exec rule"
    target, mode = transition["target"], transition["mode"].lower()
    if depth == 1 and mode == "c" and re.fullmatch(_CHILD, target):
        return None
    if depth == 2 and mode == "p" and re.fullmatch(re.escape(name) + "//" + _CHILD, target):
        return None
    return f"{line.strip()!r}: a transition to {target!r}, which is not a child of {name!r}"
