"""Certificate metrics: expiry is what operators alert on before TLS breaks."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CERT_EXPIRY = Gauge(
    "varmor_certificate_expiry_timestamp_seconds",
    "Unix time at which the certificate expires (serving: this replica's; ca: the signer).",
    ["cert"],
)
CERT_RELOADS = Counter("varmor_certificate_reloads_total", "Serving certificates loaded without a restart.")
CERT_ROTATIONS = Counter("varmor_certificate_rotations_total", "Rotation steps written by the leader.", ["step"])
