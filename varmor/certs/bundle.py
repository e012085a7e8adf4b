"""The webhook's certificate bundle and its rotation state machine (pure).

One Secret holds everything (so replicas reload one object): the serving pair
(`tls.crt`/`tls.key`, what every replica serves), the signing CA (`signer.crt`/
`signer.key`, only the leader uses it), and `ca.crt`, the CAs the API server must
trust (the webhook configurations' caBundle). That layout is also what cert-manager
writes, so an external Secret reads the same way minus the signer.

Rotation never breaks a handshake: a new CA is first *staged* (trusted next to the old
one, still serving the old leaf), then after a grace period *promoted* (the leaf is
re-issued by the new CA), and after another grace period the old CA is *trimmed* from
the bundle. A leaf alone is re-issued by the same CA and needs no caBundle change.
Everything here is a function of (bundle, config, now), so it is tested without clocks.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from varmor.certs import pki

TLS_CRT, TLS_KEY, CA_CRT = "tls.crt", "tls.key", "ca.crt"
SIGNER_CRT, SIGNER_KEY = "signer.crt", "signer.key"
PHASE_ANNOTATION = "cert.varmor.org/phase"
SINCE_ANNOTATION = "cert.varmor.org/phase-since"
SECRET_TYPE = "kubernetes.io/tls"
ROTATE_AT = 2 / 3

Phase = Literal["stable", "staged", "promoted"]


class BundleError(ValueError):
    """The Secret does not hold a usable bundle (missing or unparsable fields)."""


@dataclass(frozen=True)
class CertConfig:
    """What the serving certificate must look like, and how long things live."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    cert_lifetime: dt.timedelta = dt.timedelta(days=365)
    ca_lifetime: dt.timedelta = dt.timedelta(days=3650)
    grace: dt.timedelta = dt.timedelta(seconds=30)  # for API servers and replicas to catch up
    common_name: str = "varmor-webhook"

    @property
    def backdate(self) -> dt.timedelta:
        """Tolerance for clock skew, small enough not to distort short test lifetimes."""
        return min(pki.BACKDATE, self.cert_lifetime / 10)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)


def split_pem(bundle: bytes) -> tuple[bytes, ...]:
    """Each certificate of a PEM bundle, in order, newline-terminated."""
    return tuple(m.group(0) + b"\n" for m in _PEM_CERT.finditer(bundle))


def due_at(cert: x509.Certificate) -> dt.datetime:
    """When `cert` should be replaced: two thirds into its validity."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * ROTATE_AT


def _sans(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    dns = frozenset(ext.get_values_for_type(x509.DNSName))
    ips = frozenset(str(i) for i in ext.get_values_for_type(x509.IPAddress))
    return dns, ips


def _signed_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Bundle:
    serving: pki.KeyPair
    trusted: tuple[bytes, ...]  # caBundle, oldest first
    signer: pki.KeyPair | None = None  # None for externally managed Secrets
    phase: Phase = "stable"
    since: dt.datetime | None = None

    @property
    def ca_bundle(self) -> bytes:
        return b"".join(self.trusted)

    def to_secret(self, name: str, namespace: str) -> dict[str, Any]:
        """The Secret body (without resourceVersion)."""
        data = {TLS_CRT: self.serving.cert_pem, TLS_KEY: self.serving.key_pem, CA_CRT: self.ca_bundle}
        if self.signer is not None:
            data[SIGNER_CRT] = self.signer.cert_pem
            data[SIGNER_KEY] = self.signer.key_pem
        annotations: dict[str, str] = {PHASE_ANNOTATION: self.phase}
        if self.since is not None:
            annotations[SINCE_ANNOTATION] = self.since.isoformat()
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "varmor"},
                "annotations": annotations,
            },
            "data": {k: _b64(v) for k, v in sorted(data.items())},
        }


def _field(data: Mapping[str, Any], key: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"field {key!r} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise BundleError(f"field {key!r} is not base64") from None


def serving_from_secret(secret: Mapping[str, Any]) -> pki.KeyPair:
    """Just the serving pair, as every replica needs it (works for external Secrets too)."""
    data = secret.get("data") or {}
    pair = pki.KeyPair(_field(data, TLS_CRT), _field(data, TLS_KEY))
    try:
        pair.cert  # noqa: B018 - parse check
    except ValueError:
        raise BundleError("tls.crt is not a PEM certificate") from None
    return pair


def from_secret(secret: Mapping[str, Any], *, require_signer: bool = True) -> Bundle:
    """Parse a Secret's data into a Bundle. Raises BundleError when unusable."""
    data = secret.get("data") or {}
    serving = serving_from_secret(secret)
    trusted = split_pem(_field(data, CA_CRT))
    if not trusted:
        raise BundleError("ca.crt holds no certificate")
    signer = None
    if require_signer:
        signer = pki.KeyPair(_field(data, SIGNER_CRT), _field(data, SIGNER_KEY))
        try:
            signer.cert  # noqa: B018 - parse check
        except ValueError:
            raise BundleError("signer.crt is not a PEM certificate") from None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    phase = annotations.get(PHASE_ANNOTATION, "stable")
    if phase not in ("stable", "staged", "promoted"):
        phase = "stable"
    since = None
    if annotations.get(SINCE_ANNOTATION):
        try:
            since = dt.datetime.fromisoformat(annotations[SINCE_ANNOTATION])
        except ValueError:
            since = None
    return Bundle(serving=serving, trusted=trusted, signer=signer, phase=phase, since=since)


def _issue_leaf(signer: pki.KeyPair, cfg: CertConfig, now: dt.datetime) -> pki.KeyPair:
    return pki.issue(
        signer,
        cfg.common_name,
        cfg.cert_lifetime,
        dns_names=cfg.dns_names,
        ip_addresses=cfg.ip_addresses,
        now=now,
        backdate=cfg.backdate,
    )


def _new_ca(cfg: CertConfig, now: dt.datetime) -> pki.KeyPair:
    return pki.new_ca(f"{cfg.common_name}-ca-{now:%Y%m%d%H%M%S}", cfg.ca_lifetime, now, backdate=cfg.backdate)


def new_bundle(cfg: CertConfig, now: dt.datetime) -> Bundle:
    signer = _new_ca(cfg, now)
    return Bundle(_issue_leaf(signer, cfg, now), (signer.cert_pem,), signer, "stable", now)


def _leaf_ok(bundle: Bundle, cfg: CertConfig, now: dt.datetime) -> bool:
    assert bundle.signer is not None
    leaf = bundle.serving.cert
    wanted = (frozenset(cfg.dns_names), frozenset(str(ipaddress.ip_address(i)) for i in cfg.ip_addresses))
    return now < due_at(leaf) and _sans(leaf) == wanted and _signed_by(leaf, bundle.signer.cert)


@dataclass(frozen=True)
class Step:
    """The bundle to write (None: nothing to do) and when to look again."""

    bundle: Bundle | None
    next_check: dt.datetime
    reason: str = ""


def next_step(bundle: Bundle, cfg: CertConfig, now: dt.datetime, settled_at: dt.datetime | None = None) -> Step:
    """The next rotation step for `bundle` at `now`.

    `settled_at` is when the leader last changed the published caBundle; phase changes
    wait a grace period after both that and the phase's own start, so the API server
    trusts the new CA before any replica serves a leaf from it.
    """
    if bundle.signer is None:
        raise BundleError("a self-managed bundle needs its signer")
    since = bundle.since or now
    ready_at = max(since, settled_at or since) + cfg.grace
    if bundle.phase == "staged":
        if now < ready_at:
            return Step(None, ready_at)
        promoted = replace(bundle, serving=_issue_leaf(bundle.signer, cfg, now), phase="promoted", since=now)
        return Step(promoted, now + cfg.grace, "serving certificate re-issued by the new CA")
    if bundle.phase == "promoted":
        if now < ready_at:
            return Step(None, ready_at)
        trimmed = replace(bundle, trusted=(bundle.signer.cert_pem,), phase="stable", since=now)
        return Step(trimmed, now, "old CA removed from the caBundle")
    signer_pem = bundle.signer.cert_pem.strip()
    trusted = tuple(t.strip() for t in bundle.trusted)
    if signer_pem not in trusted:  # recovery: trust the signer before anything uses it
        staged = replace(bundle, trusted=(*bundle.trusted, bundle.signer.cert_pem), phase="staged", since=now)
        return Step(staged, now + cfg.grace, "signer added to the caBundle")
    signer_due = due_at(bundle.signer.cert)
    if now >= signer_due:
        fresh = _new_ca(cfg, now)
        staged = Bundle(bundle.serving, (bundle.signer.cert_pem, fresh.cert_pem), fresh, "staged", now)
        return Step(staged, now + cfg.grace, "new CA staged in the caBundle")
    if not _leaf_ok(bundle, cfg, now):
        renewed = replace(bundle, serving=_issue_leaf(bundle.signer, cfg, now), since=now)
        return Step(renewed, now + (cfg.grace if len(trusted) > 1 else dt.timedelta(0)), "serving certificate renewed")
    if len(trusted) > 1:  # extra CAs go once every replica serves a leaf from the signer
        if now < ready_at:
            return Step(None, ready_at)
        return Step(replace(bundle, trusted=(bundle.signer.cert_pem,), since=now), now, "caBundle trimmed")
    return Step(None, min(signer_due, due_at(bundle.serving.cert)))
