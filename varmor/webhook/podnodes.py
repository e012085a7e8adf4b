"""The node of the pod a ServiceAccount token is bound to: what the node-report guard
compares an ArmorNode write with on Kubernetes < 1.30, whose tokens have no node claim.

One GET per agent pod: the answer is cached by pod uid, because a pod's node never
changes once it is bound (a rescheduled agent is a new pod with a new uid). Anyone who can
reach the webhook port can send a review (unless `--webhook-client-ca` is set), so the
claims are checked for shape before any GET, and at most `concurrency` lookups run at
once: more are refused at once, to be retried, rather than queued.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict

from kubernetes.aio import client

from varmor.admission.nodereports import PodClaim
from varmor.kube import paths
from varmor.kube.client import ApiException
from varmor.kube.kube import Kube

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LookupsBusyError(RuntimeError):
    """Too many pod lookups in flight: the write is refused, and the agent retries."""


class PodNodes:
    def __init__(self, api_client: client.ApiClient, *, cache_size: int = 4096, concurrency: int = 4) -> None:
        self.kube = Kube(api_client, component="webhook")
        self._nodes: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._free = concurrency

    async def node_of(self, claim: PodClaim) -> str:
        """The bound pod's node; "" when the claim is malformed, the pod is gone, is another
        pod of the same name (uid differs), or is not scheduled yet."""
        node = self._nodes.get(claim.uid)
        if node:
            self._nodes.move_to_end(claim.uid)
            return node
        if not (_DNS_SUBDOMAIN.fullmatch(claim.name) and _UID.fullmatch(claim.uid)):
            return ""
        if self._free <= 0:
            raise LookupsBusyError("too many pod lookups in flight")
        self._free -= 1
        try:
            pod = await asyncio.wait_for(
                self.kube.request("GET", paths.core_path("pods", claim.namespace, claim.name)), timeout=3.0
            )
        except ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        finally:
            self._free += 1
        if (pod.get("metadata") or {}).get("uid") != claim.uid:
            return ""
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node:
            self._nodes[claim.uid] = node
            if len(self._nodes) > self._cache_size:
                self._nodes.popitem(last=False)
        return node
