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

AppArmorApi = Literal["auto", "field", "annotation"]
APPARMOR_API_CHOICES: tuple[AppArmorApi, ...] = ("auto", "field", "annotation")

_LEADING_NUMBER = re.compile(r"\d+")
_GIT_VERSION = re.compile(r"v(\d+)\.(\d+)")


@dataclass(frozen=True, order=True)
class KubeVersion:
    """A release as the API server's /version reports it ("1", "29+": managed
    distributions append a suffix to the minor)."""

    major: int
    minor: int
    git_version: str = field(default="", compare=False)

    @classmethod
    def parse(cls, major: str, minor: str, git_version: str = "") -> KubeVersion:
        """From /version's major and minor, else its gitVersion (some builds leave the two
        empty). Raises ValueError when neither holds a version."""
        found_major, found_minor = _LEADING_NUMBER.match(major or ""), _LEADING_NUMBER.match(minor or "")
        if found_major is not None and found_minor is not None:
            return cls(int(found_major.group()), int(found_minor.group()), git_version)
        found = _GIT_VERSION.match(git_version or "")
        if found is None:
            raise ValueError(f"not a Kubernetes version: major={major!r} minor={minor!r} gitVersion={git_version!r}")
        return cls(int(found.group(1)), int(found.group(2)), git_version)

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


@dataclass(frozen=True)
class Attachment:
    """How admission attaches a profile: the field, the beta annotation, or both."""

    field: bool
    beta_annotation: bool


FIELD_ONLY = Attachment(field=True, beta_annotation=False)


def attachment(mode: AppArmorApi, version: KubeVersion, seen_without_field: bool = False) -> Attachment:
    """`auto` follows the release the API server reports: the annotation before 1.30, the
    field from 1.30, and both once a release without the field has been seen (an upgrade
    under a running varmor: an HA control plane may still route requests to an older API
    server, which would drop the field and leave the container unconfined; both agree, so
    every release keeps the pod). A pinned mode is taken as it is."""
    if mode == "auto":
        has_field = version.has_apparmor_field
        return Attachment(has_field, not has_field or seen_without_field)
    return Attachment(mode == "field", mode == "annotation")
