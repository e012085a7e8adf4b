"""Who may write which ArmorNode (pure): the rule the chart's ValidatingAdmissionPolicy
enforces, for varmor's validating webhook to enforce where that policy cannot run
(Kubernetes < 1.30) or is turned off.

An agent reports for the node it runs on and no other, so a token stolen from one node
cannot report another node as protected. The node is the one the API server vouches for:
the token's node claim (`authentication.kubernetes.io/node-name`, in pod-bound tokens
from 1.30), or else, before 1.30, the node of the pod the token is bound to (its pod-name
and pod-uid claims, resolved by the caller: a pod's node never changes once bound).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

NODE_CLAIM = "authentication.kubernetes.io/node-name"
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
POD_UID_CLAIM = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class PodClaim:
    """The pod a ServiceAccount token is bound to (in the account's namespace)."""

    namespace: str
    name: str
    uid: str


def _single(extra: Mapping[str, Sequence[str]], key: str) -> str:
    values = list(extra.get(key) or ())
    return values[0] if len(values) == 1 and values[0] else ""


def node_claim(extra: Mapping[str, Sequence[str]]) -> str:
    return _single(extra, NODE_CLAIM)


def pod_claim(username: str, extra: Mapping[str, Sequence[str]]) -> PodClaim | None:
    """The bound pod of a ServiceAccount's token, when the request carries one."""
    namespace = username.removeprefix(_SA_PREFIX).split(":", 1)[0] if username.startswith(_SA_PREFIX) else ""
    name, uid = _single(extra, POD_NAME_CLAIM), _single(extra, POD_UID_CLAIM)
    return PodClaim(namespace, name, uid) if namespace and name and uid else None


def pod_to_look_up(
    username: str, extra: Mapping[str, Sequence[str]], agent_accounts: Collection[str]
) -> PodClaim | None:
    """The bound pod whose node must be looked up: an agent's, when its token carries no
    node claim (before 1.30); None otherwise."""
    if username not in agent_accounts or node_claim(extra):
        return None
    return pod_claim(username, extra)


def node_report_refusal(
    username: str,
    extra: Mapping[str, Sequence[str]],
    object_name: str,
    agent_accounts: Collection[str],
    pod_node: str = "",
) -> str | None:
    """None when the write is allowed; else why it is refused. Accounts that do not run an
    agent are not this rule's business (RBAC decides for them). `pod_node`: the node of the
    token's bound pod, looked up when `pod_to_look_up` named its pod ("" if it has none)."""
    if username not in agent_accounts:
        return None
    node = node_claim(extra) or pod_node
    if not node:
        return (
            f"{username} writes ArmorNodes only with a token bound to its node or to a pod scheduled on "
            f"it (no {NODE_CLAIM} claim, and no bound pod on a node)"
        )
    if node != object_name:
        return f"{username} on node {node!r} may write only ArmorNode {node!r}, not {object_name!r}"
    return None
