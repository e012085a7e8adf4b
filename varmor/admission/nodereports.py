"""Who may write which ArmorNode (pure): the rule the chart's ValidatingAdmissionPolicy
enforces, for varmor's validating webhook to enforce where that policy cannot run
(Kubernetes < 1.30) or is turned off.

An agent reports for the node it runs on and no other, so a token stolen from one node
cannot report another node as protected. The node is the one named by the token's node
claim (`authentication.kubernetes.io/node-name`, carried by pod-bound ServiceAccount
tokens): the only statement about the caller's node that the API server vouches for.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

NODE_CLAIM = "authentication.kubernetes.io/node-name"


def node_report_refusal(
    username: str, extra: Mapping[str, Sequence[str]], object_name: str, agent_accounts: Collection[str]
) -> str | None:
    """None when the write is allowed; else why it is refused. Accounts that do not run an
    agent are not this rule's business (RBAC decides for them)."""
    if username not in agent_accounts:
        return None
    claim = list(extra.get(NODE_CLAIM) or ())
    if len(claim) != 1 or not claim[0]:
        return f"{username} writes ArmorNodes only with a token bound to its node (no {NODE_CLAIM} claim)"
    if claim[0] != object_name:
        return f"{username} on node {claim[0]!r} may write only ArmorNode {claim[0]!r}, not {object_name!r}"
    return None
