"""Names that cross component boundaries: API group, kinds, annotations, profile names.

Pure: no I/O. Every component imports these instead of spelling strings again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUP = "crd.varmor.org"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()


VARMOR_POLICY = Resource("VarmorPolicy", "varmorpolicies", True, ("vpol",))
VARMOR_CLUSTER_POLICY = Resource("VarmorClusterPolicy", "varmorclusterpolicies", False, ("vcpol",))
ARMOR_PROFILE = Resource("ArmorProfile", "armorprofiles", True)
ARMOR_NODE = Resource("ArmorNode", "armornodes", False, ("anode",))

TARGET_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Pod")
PROFILE_PREFIX = "varmor-"
MAX_PROFILE_NAME = 63

# Pod/template annotations. The varmor opt-out is vArmor's, so existing users keep it.
K8S_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
VARMOR_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.varmor.org/"
UNCONFINED = "unconfined"
RESTARTED_AT_ANNOTATION = "controller.varmor.org/restartedAt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

# ArmorNode heartbeats: the agent renews `status.heartbeatTime` this often, and the leader
# treats a node whose heartbeat is older than DEFAULT_LOST_AFTER as having lost its agent.
DEFAULT_HEARTBEAT = 60.0  # seconds (`--agent-heartbeat`)
DEFAULT_LOST_AFTER = 3 * DEFAULT_HEARTBEAT  # `--agent-lost-after`: two missed beats tolerated

_DNS_LABELISH = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ProfileNameError(ValueError):
    pass


def profile_name(namespace: str | None, policy_name: str, install_namespace: str) -> str:
    """`varmor-<ns>-<policy>` for VarmorPolicy, `varmor-cluster-<installns>-<policy>` for
    VarmorClusterPolicy (namespace=None). Refuses names over 63 characters: truncating
    could make two policies share one profile."""
    if namespace is None:
        name = f"{PROFILE_PREFIX}cluster-{install_namespace}-{policy_name}"
    else:
        name = f"{PROFILE_PREFIX}{namespace}-{policy_name}"
    name = name.lower()
    if len(name) > MAX_PROFILE_NAME:
        raise ProfileNameError(
            f"derived profile name {name!r} is {len(name)} characters; the limit is "
            f"{MAX_PROFILE_NAME}: shorten the policy name"
        )
    if not _DNS_LABELISH.match(name):
        raise ProfileNameError(f"derived profile name {name!r} is not a valid name")
    return name
