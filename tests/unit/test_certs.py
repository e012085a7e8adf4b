"""Certificate bundle, rotation state machine, and hot reload of a live TLS listener."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import ssl

import pytest
from cryptography import x509

from varmor.certs import bundle as b
from varmor.certs import pki
from varmor.certs.tls import ReloadableTLS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
CFG = b.CertConfig(
    dns_names=("varmor-webhook.varmor.svc",),
    ip_addresses=("127.0.0.1",),
    cert_lifetime=dt.timedelta(seconds=90),
    ca_lifetime=dt.timedelta(seconds=300),
    grace=dt.timedelta(seconds=5),
)


def verifies(leaf_pem: bytes, trusted: tuple[bytes, ...]) -> bool:
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    return any(b._signed_by(leaf, x509.load_pem_x509_certificate(ca)) for ca in trusted)


def test_secret_round_trip_keeps_everything() -> None:
    bundle = b.new_bundle(CFG, T0)
    secret = bundle.to_secret("tls", "varmor")
    assert secret["type"] == "kubernetes.io/tls"
    back = b.from_secret(secret)
    assert back == bundle
    assert b.serving_from_secret(secret) == bundle.serving
    external = {"data": {k: v for k, v in secret["data"].items() if not k.startswith("signer")}}
    assert b.from_secret(external, require_signer=False).signer is None
    with pytest.raises(b.BundleError):
        b.from_secret(external)
    with pytest.raises(b.BundleError):
        b.serving_from_secret({"data": {"tls.crt": "!!", "tls.key": "eA=="}})


def test_split_pem() -> None:
    one, two = pki.new_ca("a", dt.timedelta(days=1)), pki.new_ca("b", dt.timedelta(days=1))
    assert b.split_pem(one.cert_pem + two.cert_pem) == (one.cert_pem, two.cert_pem)
    assert b.split_pem(b"garbage") == ()


def walk(start: b.Bundle, until: dt.datetime) -> list[tuple[dt.datetime, b.Bundle, str]]:
    """Drive the state machine like the leader does, publishing immediately after each write."""
    states = [(T0, start, "created")]
    now, current = T0, start
    while now < until:
        step = b.next_step(current, CFG, now, settled_at=now if states[-1][0] == now else None)
        if step.bundle is not None:
            current = step.bundle
            states.append((now, current, step.reason))
            continue
        now = max(step.next_check, now + dt.timedelta(milliseconds=1))
    return states


def test_rotation_never_serves_an_untrusted_leaf() -> None:
    states = walk(b.new_bundle(CFG, T0), T0 + dt.timedelta(seconds=700))
    reasons = [r for _, _, r in states]
    assert "serving certificate renewed" in reasons
    assert reasons.count("new CA staged in the caBundle") >= 2
    assert "serving certificate re-issued by the new CA" in reasons
    assert "old CA removed from the caBundle" in reasons
    for (t_prev, prev, _), (t_next, nxt, reason) in itertools.pairwise(states):
        # API servers and replicas may lag one step behind in either direction.
        assert verifies(nxt.serving.cert_pem, prev.trusted), reason
        assert verifies(nxt.serving.cert_pem, nxt.trusted), reason
        assert verifies(prev.serving.cert_pem, nxt.trusted), reason
        if nxt.serving != prev.serving and prev.phase != "stable":
            assert t_next - t_prev >= CFG.grace or nxt.phase == "promoted"
        assert len(nxt.trusted) <= 2
    # Rotation happens at two thirds of the lifetime, never later.
    renew_at = next(t for t, _, r in states if r == "serving certificate renewed")
    assert renew_at == b.due_at(states[0][1].serving.cert)


def test_phase_changes_wait_for_grace_after_publishing() -> None:
    staged = b.Bundle(
        serving=b.new_bundle(CFG, T0).serving,
        trusted=(b"x",),
        signer=b.new_bundle(CFG, T0).signer,
        phase="staged",
        since=T0,
    )
    late_publish = T0 + dt.timedelta(seconds=4)
    step = b.next_step(staged, CFG, T0 + dt.timedelta(seconds=6), settled_at=late_publish)
    assert step.bundle is None
    assert step.next_check == late_publish + CFG.grace


def test_changed_sans_or_foreign_leaf_are_reissued_without_dropping_trust() -> None:
    bundle = b.new_bundle(CFG, T0)
    other = b.CertConfig(**{**CFG.__dict__, "dns_names": ("new.varmor.svc",)})
    step = b.next_step(bundle, other, T0 + dt.timedelta(seconds=1))
    assert step.bundle is not None
    assert step.reason == "serving certificate renewed"
    assert b._sans(step.bundle.serving.cert)[0] == {"new.varmor.svc"}
    # A signer the caBundle does not trust yet is staged first, never served directly.
    stranger = pki.new_ca("stranger", dt.timedelta(days=1))
    broken = b.Bundle(bundle.serving, bundle.trusted, stranger, "stable", T0)
    step = b.next_step(broken, CFG, T0)
    assert step.bundle is not None
    assert step.bundle.phase == "staged"
    assert step.bundle.serving == bundle.serving


# -- hot reload of a live listener ---------------------------------------------------


async def _handshake(port: int, ca_pem: bytes) -> bytes:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        writer.write(b"ping\n")
        await writer.drain()
        assert await reader.readline() == b"pong\n"
        return bytes(der)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_reload_swaps_certificate_for_new_connections_only() -> None:
    first = b.new_bundle(CFG, dt.datetime.now(dt.UTC))
    second = b.new_bundle(CFG, dt.datetime.now(dt.UTC))
    tls = ReloadableTLS()
    assert tls.load(first.serving)
    assert not tls.load(first.serving)  # same pair: no-op

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(b"pong\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        ca1, ca2 = first.ca_bundle, second.ca_bundle
        # A keep-alive connection opened before the reload keeps working after it.
        ctx = ssl.create_default_context(cadata=ca1.decode())
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        await _handshake(port, ca1)
        assert tls.load(second.serving)
        der = await _handshake(port, ca2)
        assert x509.load_der_x509_certificate(der) == second.serving.cert
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(port, ca1)
        writer.write(b"ping\n")
        await writer.drain()
        assert await reader.readline() == b"pong\n"
        writer.close()
        await writer.wait_closed()
        # A mismatched pair is refused and the live context keeps serving the good one.
        with pytest.raises(ssl.SSLError):
            tls.load(pki.KeyPair(first.serving.cert_pem, second.serving.key_pem))
        await _handshake(port, ca2)
    finally:
        server.close()
        await server.wait_closed()
