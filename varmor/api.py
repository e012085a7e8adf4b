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
    api_version: str = API_VERSION  # "v1" for the core kinds varmor watches


VARMOR_POLICY = Resource("VarmorPolicy", "varmorpolicies", True, ("vpol",))
VARMOR_CLUSTER_POLICY = Resource("VarmorClusterPolicy", "varmorclusterpolicies", False, ("vcpol",))
ARMOR_PROFILE = Resource("ArmorProfile", "armorprofiles", True)
ARMOR_NODE = Resource("ArmorNode", "armornodes", False, ("anode",))
# Behaviour modelling: one node's share of what a profile's processes did (written by that
# node's agent), and the leader's merge of the shares, per profile (outlives its policy).
ARMOR_BEHAVIOR = Resource("ArmorBehavior", "armorbehaviors", True)
ARMOR_PROFILE_MODEL = Resource("ArmorProfileModel", "armorprofilemodels", True)
POD = Resource("Pod", "pods", True, api_version="v1")  # the agent watches its node's pods

TARGET_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Pod")
PROFILE_PREFIX = "varmor-"
MAX_PROFILE_NAME = 63

# Pod/template annotations. The varmor opt-out is vArmor's, so existing users keep it.
K8S_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
VARMOR_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.varmor.org/"
UNCONFINED = "unconfined"
RESTARTED_AT_ANNOTATION = "controller.varmor.org/restartedAt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PROFILE_LABEL = "varmor.org/profile"  # an ArmorBehavior's profile (the leader selects a profile's shares by it)
# A DefenseInDepth policy enforces the model digest it was switched in with; a later model
# is enforced only once this annotation on the policy names its sha256 (`varmor model accept`).
ACCEPT_MODEL_ANNOTATION = "varmor.org/accept-model"

# ArmorNode heartbeats: the agent renews `status.heartbeatTime` this often, and the leader
# treats a node whose heartbeat is older than DEFAULT_LOST_AFTER as having lost its agent.
# An ArmorNode's load report lists at most this many profiles still loading, and failed
# (varmor.loadreport): its size does not grow with the number of profiles.
MAX_LOADING_EXCEPTIONS = 8
MAX_FAILED_EXCEPTIONS = 64
DEFAULT_HEARTBEAT = 60.0  # seconds (`--agent-heartbeat`)
DEFAULT_LOST_AFTER = 3 * DEFAULT_HEARTBEAT  # `--agent-lost-after`: two missed beats tolerated

# Kubernetes names: a namespace is a DNS-1123 label, a policy name a DNS-1123 subdomain.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# Namespaces whose plain name could read as a cluster policy's `varmor-cluster-<installns>-...`.
_CLUSTER_LIKE = "cluster-"


class ProfileNameError(ValueError):
    pass


def profile_name(namespace: str | None, policy_name: str, install_namespace: str) -> str:
    """The profile (and ArmorProfile) name of a policy: injective over (kind, namespace, name).

    - VarmorClusterPolicy (namespace=None): `varmor-cluster-<installns>-<name>`, as vArmor.
    - VarmorPolicy whose name has no `-` (and whose namespace does not start with
      `cluster-`): `varmor-<ns>-<name>`, as vArmor. The last `-` splits namespace from name.
    - Any other VarmorPolicy: `varmor-<len(ns)>.<ns>-<name>`. vArmor's form would be
      ambiguous there (`a-b`/`c` and `a`/`b-c`); the length says where the namespace ends,
      and the `.` in the first `-`-separated segment (which no namespace has) keeps these
      names apart from the two forms above.

    Refuses names over 63 characters (truncating could make two policies share one profile)
    and inputs that are not Kubernetes names (lowercasing them could, too).
    See docs/contracts.md "Profile names".
    """
    if not _DNS_SUBDOMAIN.fullmatch(policy_name) or len(policy_name) > 253:
        raise ProfileNameError(f"policy name {policy_name!r} is not a DNS-1123 subdomain")
    if namespace is None:
        if not _DNS_LABEL.fullmatch(install_namespace):
            raise ProfileNameError(f"install namespace {install_namespace!r} is not a DNS-1123 label")
        name = f"{PROFILE_PREFIX}cluster-{install_namespace}-{policy_name}"
    elif not _DNS_LABEL.fullmatch(namespace) or len(namespace) > 63:
        raise ProfileNameError(f"namespace {namespace!r} is not a DNS-1123 label")
    elif "-" not in policy_name and not namespace.startswith(_CLUSTER_LIKE):
        name = f"{PROFILE_PREFIX}{namespace}-{policy_name}"
    else:
        name = f"{PROFILE_PREFIX}{len(namespace)}.{namespace}-{policy_name}"
    if len(name) > MAX_PROFILE_NAME:
        raise ProfileNameError(
            f"derived profile name {name!r} is {len(name)} characters; the limit is "
            f"{MAX_PROFILE_NAME}: shorten the policy name"
        )
    return name
