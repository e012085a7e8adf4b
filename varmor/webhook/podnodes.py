"""The node of the pod a ServiceAccount token is bound to: what the node-report guard
compares an ArmorNode write with on Kubernetes < 1.30, whose tokens have no node claim.

One GET per agent pod: the answer is cached by pod uid, because a pod's node never
changes once it is bound (a rescheduled agent is a new pod with a new uid).
"""

from __future__ import annotations

from collections import OrderedDict

from kubernetes.aio import client

from varmor.admission.nodereports import PodClaim
from varmor.kube import paths
from varmor.kube.client import ApiException
from varmor.kube.kube import Kube


class PodNodes:
    def __init__(self, api_client: client.ApiClient, *, cache_size: int = 4096) -> None:
        self.kube = Kube(api_client, component="webhook")
        self._nodes: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    async def node_of(self, claim: PodClaim) -> str:
        """The bound pod's node; "" when the pod is gone, is another pod of the same name
        (uid differs), or is not scheduled yet."""
        node = self._nodes.get(claim.uid)
        if node:
            self._nodes.move_to_end(claim.uid)
            return node
        try:
            pod = await self.kube.request("GET", paths.core_path("pods", claim.namespace, claim.name))
        except ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        if (pod.get("metadata") or {}).get("uid") != claim.uid:
            return ""
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node:
            self._nodes[claim.uid] = node
            if len(self._nodes) > self._cache_size:
                self._nodes.popitem(last=False)
        return node
