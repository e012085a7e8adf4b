"""The image's secret scan (`find_secrets`) finds each kind of credential it names, and not
the code that merely names them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from varmor.dev.secretscan import Secret, find_secrets

pytestmark = pytest.mark.image


def _b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _jwt() -> str:
    """A ServiceAccount token's shape: header.claims.signature, base64url."""
    claims = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:varmor:varmor", "exp": 1}
    return f"{_b64url({'alg': 'RS256', 'kid': 'k'})}.{_b64url(claims)}.{'s' * 86}"


def _plant(root: Path, rel: str, data: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def test_the_scan_finds_each_kind_of_credential(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pass"),
    )
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }
    _plant(tmp_path, "etc/ssl/private/server.key", pem)
    _plant(tmp_path, "opt/app/legacy.pem", encrypted)
    _plant(tmp_path, "root/.kube/config", yaml.safe_dump(kubeconfig))
    _plant(tmp_path, "etc/varmor/admin.json", json.dumps(kubeconfig, indent=2))
    _plant(tmp_path, "opt/app/settings.py", f"TOKEN = {_jwt()!r}\n")
    _plant(tmp_path, "var/run/secrets/kubernetes.io/serviceaccount/token", "not even token-shaped")
    # What the image does carry and must not be reported: code that names a PEM header
    # (cryptography's ssh.py), a certificate, YAML with only one of the two kubeconfig keys,
    # Python code holding a kubeconfig's shape (the Kubernetes client's own tests).
    _plant(tmp_path, "opt/lib/ssh.py", '_SK_START = b"-----BEGIN OPENSSH PRIVATE KEY-----"\n_SK_END = b"-----END"\n')
    _plant(tmp_path, "opt/lib/docs.yaml", "clusters:\n  - a\n")
    _plant(tmp_path, "opt/lib/kube_config_test.py", f"CONFIG = {json.dumps(kubeconfig)}\n")
    _plant(tmp_path, "etc/ssl/certs/ca.pem", "-----BEGIN CERTIFICATE-----\n" + "A" * 64 + "\n")

    assert sorted(find_secrets(tmp_path), key=lambda s: (s.path, s.kind)) == [
        Secret("etc/ssl/private/server.key", "private-key"),
        Secret("etc/varmor/admin.json", "kubeconfig"),
        Secret("opt/app/legacy.pem", "private-key"),
        Secret("opt/app/settings.py", "token"),
        Secret("root/.kube/config", "kubeconfig"),
        Secret("var/run/secrets/kubernetes.io/serviceaccount/token", "service-account-token"),
    ]


def test_a_clean_tree_has_none(tmp_path: Path) -> None:
    _plant(tmp_path, "usr/bin/tool", b"\x7fELF" + bytes(range(256)))
    assert find_secrets(tmp_path) == []
