"""Pods on this node whose containers wait for a varmor profile the kernel does not have.

The container runtime refuses to create a container whose Localhost AppArmor profile is not
loaded (`CreateContainerError`), and the kubelet retries at every sync of the pod. That
happens when a pod is admitted before this node has loaded its policy's profile (a node that
joined or rebooted, a policy created a moment ago, a load that failed), or when someone
removed the profile from the kernel behind varmor's back. The kubelet's own Event says only
that creation failed; the agent is the one that knows why the profile is missing, so it
watches the pods bound to its node (a field selector: only those) and says so:

- an Event on the pod and on the policy names the waiting pod, the container and the reason;
- a profile the agent believes loaded but the kernel lacks is reloaded at once (the periodic
  refresh would find it too, minutes later);
- once the container runs, an Event on both says it started and how long it waited.

Recovery needs no step from anyone: the kubelet's next retry after the load succeeds.
Attribution never crosses tenants: the policy hears about a pod only when the pod is in the
policy's namespace, or when the policy is a VarmorClusterPolicy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from varmor.admission.objects import Container, PlanError, view_of
from varmor.admission.planner import effective_localhost
from varmor.clock import Clock, utc_now
from varmor.events import ObjectRef, event_body
from varmor.kube.client import JSON
from varmor.kube.informer import EventType
from varmor.nodeexec import metrics
from varmor.nodeexec.attribution import container_statuses
from varmor.nodeexec.eventqueue import EventQueue, RateLimiter
from varmor.nodeexec.files import is_varmor_name
from varmor.nodeexec.state import Desired

log = logging.getLogger(__name__)
REFUSED = "CreateContainerError"  # the kubelet's waiting reason when the runtime refused to create
MAX_MESSAGE = 300  # of the runtime's message, quoted in the pod's Event


@dataclass(frozen=True)
class Waiting:
    """One container the runtime refused while it names a varmor profile."""

    namespace: str
    pod: str
    uid: str
    container: str
    profile: str
    message: str  # the kubelet's, as the pod's status has it

    @property
    def key(self) -> tuple[str, str, str]:
        return self.uid, self.container, self.profile


def _containers(spec: Any) -> dict[str, Container]:
    found: dict[str, Container] = {}
    for group in (spec.init_containers, spec.containers, spec.ephemeral_containers):
        for container in group or ():
            found[container.name] = container
    return found


def waiting_for_profile(pod: Mapping[str, Any]) -> list[Waiting]:
    """The containers of `pod` waiting with `CreateContainerError` whose profile is a varmor
    one. The profile comes from the pod's spec (what the kubelet asked the runtime for),
    never from the runtime's message, which is only quoted."""
    meta = pod.get("metadata") or {}
    if not isinstance(meta, Mapping):
        return []
    refused = []
    for entry in container_statuses(pod):
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if isinstance(waiting, Mapping) and waiting.get("reason") == REFUSED:
            refused.append((str(entry.get("name") or ""), str(waiting.get("message") or "")))
    if not refused:
        return []
    try:
        view = view_of({"metadata": meta, "spec": pod.get("spec") or {}})
    except PlanError:
        return []
    if view.spec is None:
        return []
    containers = _containers(view.spec)
    out = []
    for name, message in refused:
        container = containers.get(name)
        profile = effective_localhost(view.metadata, view.spec, container) if container is not None else None
        if profile and is_varmor_name(profile):
            out.append(
                Waiting(
                    namespace=str(meta.get("namespace") or ""),
                    pod=str(meta.get("name") or ""),
                    uid=str(meta.get("uid") or ""),
                    container=name,
                    profile=profile,
                    message=message[:MAX_MESSAGE],
                )
            )
    return out


@dataclass
class _Episode:
    waiting: Waiting
    since: float  # monotonic
    told: bool  # Events were sent: the profile was missing when the runtime tried
    policy_told: bool = False  # the policy heard of it (its ArmorProfile may arrive later)


Explain = Callable[[str], Awaitable[str | None]]


class WaitingPods:
    """Follows the pods of one node (handler of an Informer over them) and reports the
    containers that wait for a varmor profile.

    `explain(profile)` is the agent's: None when the kernel has the profile (the refusal had
    another cause, not varmor's to report), else why it is missing; it also starts a reload
    when the agent thought the profile loaded. `owner(profile)` names the ArmorProfile."""

    def __init__(
        self,
        node: str,
        explain: Explain,
        owner: Callable[[str], Desired | None],
        events: EventQueue | None,
        *,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        policy_event_interval: float = 60.0,
    ) -> None:
        self.node = node
        self.explain = explain
        self.owner = owner
        self.events = events
        self.clock = clock
        self.monotonic = monotonic
        self.episodes: dict[tuple[str, str, str], _Episode] = {}
        # Pods of any tenant can name a cluster policy's profile: its Events are rate-limited.
        self.limiter = RateLimiter(policy_event_interval)
        self._uid_of: dict[tuple[str, str], str] = {}  # (namespace, name) -> UID
        self._lock = asyncio.Lock()

    async def on_pod(self, event: EventType, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        name = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        now_waiting = {} if event == "DELETED" else {w.key: w for w in waiting_for_profile(pod)}
        async with self._lock:  # one pod's episodes change as one step
            replaced = self._uid_of.pop(name, uid)
            if event != "DELETED":
                self._uid_of[name] = uid
            for key in [k for k in self.episodes if k[0] == replaced != uid]:  # a relist's same-name pod
                del self.episodes[key]
            for key in [k for k in self.episodes if k[0] == uid and k not in now_waiting]:
                episode = self.episodes.pop(key)
                if episode.told and event != "DELETED" and _running(pod, key[1]):
                    self._tell_started(episode)
            for key, waiting in now_waiting.items():
                if key not in self.episodes:
                    why = await self.explain(waiting.profile)
                    if why is None and waiting.profile in waiting.message:
                        # The runtime named it missing, and the agent has loaded it since.
                        why = "it was loaded since the runtime tried"
                    episode = _Episode(waiting, self.monotonic(), told=why is not None)
                    self.episodes[key] = episode
                    if why is not None:
                        self._tell_waiting(episode, why)
            self._count()

    def profile_known(self, profile: str) -> None:
        """The agent synced `profile`: a policy whose ArmorProfile reached this node after the
        runtime refused its pod hears of that pod now (once: the decision is kept)."""
        if self.owner(profile) is None:
            return
        for episode in self.episodes.values():
            if episode.told and not episode.policy_told and episode.waiting.profile == profile:
                episode.policy_told = True
                if (policy := self._policy(episode.waiting)) is not None:
                    self._tell_policy(policy, episode, "its ArmorProfile reached this node after the runtime tried")

    def _count(self) -> None:
        metrics.CONTAINERS_WAITING.set(sum(1 for e in self.episodes.values() if e.told))

    # -- Events ------------------------------------------------------------------------
    def _send(self, ref: ObjectRef, severity: Any, reason: str, message: str) -> None:
        if self.events is None:
            return
        self.events.offer(
            event_body(ref, severity, reason, message, component="agent", instance=self.node, now=self.clock())
        )

    def _policy(self, w: Waiting) -> ObjectRef | None:
        """The policy that may hear of `w`'s pod, if any."""
        owner = self.owner(w.profile)
        policy = owner.policy if owner is not None else None
        if policy is None or not policy.may_name(w.namespace):
            return None
        return ObjectRef(kind=policy.kind, name=policy.name, namespace=policy.namespace, uid=policy.uid)

    def _pod(self, w: Waiting) -> ObjectRef:
        return ObjectRef(kind="Pod", name=w.pod, namespace=w.namespace, uid=w.uid, api_version="v1")

    def _tell_policy(self, policy: ObjectRef, episode: _Episode, why: str) -> None:
        w = episode.waiting
        send, suppressed = self.limiter.admit((policy.kind, policy.namespace, policy.name), self.monotonic())
        if not send:
            return
        message = (
            f"pod {w.namespace}/{w.pod} ({w.container}) waits on node {self.node}: AppArmor profile {w.profile} "
            f"is not loaded there: {why}. The kubelet retries and starts it once the profile is loaded."
        )
        if suppressed:
            message += f" {suppressed} more pods waited since the previous event."
        self._send(policy, "Warning", "ProfileNotLoaded", message)

    def _tell_waiting(self, episode: _Episode, why: str) -> None:
        """The pod always hears; the reason in detail only when the profile's policy may name
        the pod (its own namespace's, or a cluster policy): a pod that names another
        tenant's profile learns nothing of that tenant's policy, not even a load failure."""
        w = episode.waiting
        log.warning(
            "pod %s/%s container %s waits for profile %s: %s",
            w.namespace,
            w.pod,
            w.container,
            w.profile,
            why,
            extra={"fields": {"runtime": w.message}},
        )
        policy = self._policy(w)
        shown = why if policy is not None else "it is not loaded on this node"
        message = (
            f"container {w.container} waits on node {self.node}: AppArmor profile {w.profile} is not loaded "
            f"there: {shown}. The kubelet retries and starts it once the profile is loaded."
        )
        if w.message:
            message += f" Runtime: {w.message}"
        self._send(self._pod(w), "Warning", "ProfileNotLoaded", message)
        if self.owner(w.profile) is not None:
            episode.policy_told = True
            if policy is not None:
                self._tell_policy(policy, episode, why)

    def _tell_started(self, episode: _Episode) -> None:
        w = episode.waiting
        waited = self.monotonic() - episode.since
        log.info(
            "pod %s/%s container %s started under %s after %.0fs", w.namespace, w.pod, w.container, w.profile, waited
        )
        started = f"started on node {self.node} under {w.profile} after waiting {waited:.0f}s for it"
        self._send(self._pod(w), "Normal", "ProfileLoaded", f"container {w.container} {started}")
        policy = self._policy(w)
        if (
            policy is not None
            and self.limiter.admit((policy.kind, policy.namespace, policy.name, "started"), self.monotonic())[0]
        ):
            self._send(policy, "Normal", "ProfileLoaded", f"pod {w.namespace}/{w.pod} ({w.container}) {started}")


def _running(pod: Mapping[str, Any], container: str) -> bool:
    for entry in container_statuses(pod):
        if entry.get("name") == container:
            state = entry.get("state") or {}
            return isinstance(state, Mapping) and ("running" in state or "terminated" in state)
    return False
