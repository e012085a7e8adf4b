"""A strict RFC 6902 applier for the ops varmor emits (add, remove, replace, test).

Strict on purpose: Kubernetes' json-patch is lenient (it accepts `replace` on a missing
key); applying our patches with this one in tests proves they are valid as sent. The
leader's rollouts also use it to apply planner output to a workload before an update.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any


class PatchError(ValueError):
    pass


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"pointer {path!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"bad array index {token!r}")
    idx = int(token)
    if idx > len(container) or (idx == len(container) and not for_add):
        raise PatchError(f"array index {idx} out of range")
    return idx


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"missing member {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"cannot descend into {type(node).__name__} at {token!r}")
    return node


def apply_patch(doc: Any, ops: Iterable[dict[str, Any]]) -> Any:
    """A patched deep copy of `doc`; raises PatchError on any op invalid for the document."""
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, tokens = op.get("op"), _tokens(str(op.get("path")))
        if not tokens:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
                continue
            raise PatchError(f"{kind} on the whole document")
        parent, last = _parent(doc, tokens), tokens[-1]
        if kind == "add":
            if isinstance(parent, dict):
                parent[last] = copy.deepcopy(op["value"])
            elif isinstance(parent, list):
                parent.insert(_index(parent, last, for_add=True), copy.deepcopy(op["value"]))
            else:
                raise PatchError(f"add into a {type(parent).__name__}")
        elif kind in ("remove", "replace", "test"):
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError(f"{kind}: missing member {last!r}")
                key: Any = last
            elif isinstance(parent, list):
                key = _index(parent, last, for_add=False)
            else:
                raise PatchError(f"{kind} in a {type(parent).__name__}")
            if kind == "remove":
                del parent[key]
            elif kind == "replace":
                parent[key] = copy.deepcopy(op["value"])
            elif parent[key] != op["value"]:
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unsupported op {kind!r}")
    return doc
