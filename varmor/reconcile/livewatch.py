"""The leader's liveness watch: an agent that stops heartbeating changes no object, so the
leader looks again at the earliest expiry and re-reconciles every policy when the set of
lost ArmorNodes changes. The judgement is `varmor.reconcile.liveness` (the leader's clock
only); this module adds the clock readings, the wake-ups and the one measurement of the
API server's clock that dates each node's first sight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from kubernetes.aio import client

from varmor import api
from varmor.clock import Clock, parse_time
from varmor.kube import paths
from varmor.kube.client import JSON, raw_request
from varmor.kube.informer import EventType
from varmor.reconcile.liveness import Heartbeats, Liveness, Offset, lost_nodes, next_expiry, node_name

log = logging.getLogger(__name__)

# Any authenticated account may create one (system:basic-user); nothing is stored.
SELF_SUBJECT_REVIEW = api.Resource(
    "SelfSubjectReview", "selfsubjectreviews", False, api_version="authentication.k8s.io/v1"
)


async def measure_offset(api_client: client.ApiClient, clock: Clock, timeout: float = 10.0) -> Offset | None:
    """The API server's clock against ours: the creationTimestamp it gives a
    SelfSubjectReview, read against our clock once the answer is in. None (logged) when
    the server cannot say; the watch then dates first sights "now"."""
    body = {"apiVersion": SELF_SUBJECT_REVIEW.api_version, "kind": SELF_SUBJECT_REVIEW.kind}
    try:
        review = await raw_request(
            api_client, "POST", paths.custom_path(SELF_SUBJECT_REVIEW), body=body, request_timeout=timeout
        )
    except Exception as exc:
        log.warning("could not read the API server's clock (%s): agents count as heard at start", exc)
        return None
    after = clock()
    server = parse_time((review.get("metadata") or {}).get("creationTimestamp"))
    if server is None:
        log.warning("the API server's SelfSubjectReview has no creationTimestamp: agents count as heard at start")
        return None
    return Offset(server, after)


class LivenessWatch:
    """Heartbeats seen, the lost set at the last check, and the loop that rechecks."""

    def __init__(
        self,
        nodes: Callable[[], list[JSON]],
        clock: Clock,
        *,
        lost_after: float,
        margin: float,
        resync: float,
        on_change: Callable[[], None],
    ) -> None:
        self.nodes = nodes
        self.clock = clock
        self.lost_after = lost_after
        self.margin = margin  # after the first expiry: server timestamps have 1 s precision
        self.resync = resync
        self.on_change = on_change  # the lost set changed: every policy's status may have
        self.heartbeats = Heartbeats()
        self.lost: frozenset[str] = frozenset()
        self._changed = asyncio.Event()

    async def start(self, api_client: client.ApiClient) -> None:
        """Measure the server's clock before the first ArmorNode is seen."""
        self.heartbeats.offset = await measure_offset(api_client, self.clock)

    def liveness(self) -> Liveness:
        now = self.clock()
        return Liveness(now, self.lost_after, self.heartbeats.observe(self.nodes(), now))

    def node_event(self, event: EventType, node: JSON) -> None:
        """Wake the loop when a node arrives or a lost agent is back (no timer covers those)."""
        if event == "DELETED":
            return
        now = self.clock()
        heard = self.heartbeats.note(node, now)
        liveness = Liveness(now, self.lost_after, {node_name(node): heard} if heard is not None else {})
        if event == "ADDED" or (node_name(node) in self.lost) != liveness.lost(node):
            self._changed.set()

    def check(self) -> float | None:
        """Report a changed lost set; returns seconds until the next alive node would turn
        lost (None: no heartbeats to watch)."""
        nodes, liveness = self.nodes(), self.liveness()
        lost = lost_nodes(nodes, liveness)
        if lost != self.lost:
            gone, back = sorted(lost - self.lost), sorted(self.lost - lost)
            if gone:
                log.warning("varmor agent lost (no heartbeat for %gs) on %s", self.lost_after, ", ".join(gone))
            if back:
                log.info("varmor agent reporting again on %s", ", ".join(back))
            self.lost = lost
            self.on_change()
        return next_expiry(nodes, liveness)

    async def run(self) -> None:
        while True:
            self._changed.clear()
            wait = self.check()
            timeout = self.resync if wait is None else wait + self.margin
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancellation (3.11)
                async with asyncio.timeout(min(timeout, self.resync)):
                    await self._changed.wait()
