"""The secret scan every image build runs before it writes a layer: credentials in a file
tree. An image must carry none: everyone who can pull it would hold them."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

_PRIVATE_KEY = re.compile(
    # A PEM block, not the header's text alone (cryptography's code names it): the header,
    # optional RFC 1421 headers (an encrypted key), then base64.
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n(?:[A-Za-z-]+: [^\n]*\r?\n)*(?:\r?\n)?[A-Za-z0-9+/=]{40,}"
)
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{20,}")
_CLUSTERS = re.compile(rb"^clusters:", re.MULTILINE)
_USERS = re.compile(rb"^users:", re.MULTILINE)
_JSON_OBJECT = re.compile(rb"\s*\{")


def _json_kubeconfig(data: bytes) -> bool:
    """A kubeconfig written as JSON (kubectl accepts both). Only whole JSON documents:
    Python code that builds kubeconfigs (the client's tests, varmor's dev cluster) names
    the same keys."""
    if not _JSON_OBJECT.match(data) or b'"clusters"' not in data or b'"users"' not in data:
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and "clusters" in doc and "users" in doc


@dataclass(frozen=True)
class Secret:
    path: str  # relative to the scanned root
    kind: str  # private-key, kubeconfig, token, service-account-token


def find_secrets(root: Path) -> list[Secret]:
    """Credentials in a file tree: PEM private keys, kubeconfigs (YAML with `clusters:` and
    `users:` at the top level, or the JSON form), JWT-shaped tokens (what ServiceAccount
    tokens are) and token files where Kubernetes mounts them."""
    found: list[Secret] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if "secrets/kubernetes.io/" in f"/{rel}" or (name == "token" and Path(dirpath).name == "serviceaccount"):
                found.append(Secret(rel, "service-account-token"))
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            data = path.read_bytes()
            if _PRIVATE_KEY.search(data):
                found.append(Secret(rel, "private-key"))
            if _JWT.search(data):
                found.append(Secret(rel, "token"))
            if (_CLUSTERS.search(data) and _USERS.search(data)) or _json_kubeconfig(data):
                found.append(Secret(rel, "kubeconfig"))
    return found
