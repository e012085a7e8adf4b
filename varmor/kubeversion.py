"""Which Kubernetes releases varmor runs on, and what differs between them (pure).

varmor supports Kubernetes 1.29 and later. Two differences matter inside that range:
- the pod API: `securityContext.appArmorProfile` arrives in 1.30; before, only the beta
  annotations `container.apparmor.security.beta.kubernetes.io/<container>` exist (an
  older API server drops the field silently, leaving the container unconfined);
- admission guards: ValidatingAdmissionPolicy (v1) and the node claim of bound
  ServiceAccount tokens arrive in 1.30; before, varmor's validating webhook enforces the
  node-report rule itself (`admission.nodereports`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

MIN_SUPPORTED = (1, 29)
APPARMOR_FIELD_SINCE = (1, 30)
VALIDATING_ADMISSION_POLICY_SINCE = (1, 30)

AppArmorApi = Literal["auto", "field", "annotation"]
APPARMOR_API_CHOICES: tuple[AppArmorApi, ...] = ("auto", "field", "annotation")

_LEADING_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, order=True)
class KubeVersion:
    """A release as the API server's /version reports it ("1", "29+": managed
    distributions append a suffix to the minor)."""

    major: int
    minor: int
    git_version: str = field(default="", compare=False)

    @classmethod
    def parse(cls, major: str, minor: str, git_version: str = "") -> KubeVersion:
        """Raises ValueError when either number is missing."""
        found_major, found_minor = _LEADING_NUMBER.match(major or ""), _LEADING_NUMBER.match(minor or "")
        if found_major is None or found_minor is None:
            raise ValueError(f"not a Kubernetes version: major={major!r} minor={minor!r}")
        return cls(int(found_major.group()), int(found_minor.group()), git_version)

    @property
    def release(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def __str__(self) -> str:
        return self.git_version or f"v{self.major}.{self.minor}"

    @property
    def has_apparmor_field(self) -> bool:
        return self.release >= APPARMOR_FIELD_SINCE


def refusal(version: KubeVersion) -> str | None:
    """Why varmor cannot run against `version`, or None when it can."""
    if version.release >= MIN_SUPPORTED:
        return None
    oldest = ".".join(map(str, MIN_SUPPORTED))
    return (
        f"Kubernetes {version} is not supported: varmor needs {oldest} or later "
        "(CEL validation of its CRDs, webhook matchConditions and the pod AppArmor API it writes)"
    )


def uses_apparmor_field(mode: AppArmorApi, version: KubeVersion) -> bool:
    """Whether admission writes `securityContext.appArmorProfile` (else the beta annotation).
    `auto` follows the release the API server reports."""
    if mode == "auto":
        return version.has_apparmor_field
    return mode == "field"
