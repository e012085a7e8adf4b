"""Behaviour collection: a modelling profile's ALLOWED records become this node's share
of its model, an ArmorBehavior named `<profile>.<node>` (one writer: this agent).

A record is turned into a rule (`varmor.behavior.observe`), generalised (pids, per-boot
and random names), and counted. Records of the container runtime's own processes (runc's
stages, the shims) are excluded and counted: what runc does before it executes the
workload is not the workload's behaviour. Records no rule can express are counted as
excluded too, never silently dropped.

Shares are written every `flush_seconds` when they changed, whole (PUT with the
resourceVersion read; a 409 re-reads once). On the first write after a start the stored
share is read back and merged, so an agent restart loses nothing collected before it.
A share records the node's audit loss measured since collection began (`LossMeter`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from varmor import api
from varmor.behavior.codec import decode_model_data, encode_model_data
from varmor.behavior.generalise import collapse, generalise, is_runtime_process
from varmor.behavior.model import Behavior, BehaviorRule
from varmor.behavior.observe import observe
from varmor.clock import Clock, now_rfc3339, utc_now
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.kube import Kube
from varmor.nodeexec import metrics
from varmor.nodeexec.attribution import Attribution
from varmor.nodeexec.audit import AuditRecord, parse_serial
from varmor.nodeexec.auditloss import KernelLossCounter, SerialGapTracker, parse_kernel_loss
from varmor.nodeexec.state import Desired

log = logging.getLogger(__name__)
MAX_RULES = 50_000  # per profile and node, after generalisation and collapsing
# A share's JSON, roughly: what a node writes for one profile, and what the leader decodes
# and merges, stays bounded whatever a workload names its files.
MAX_SHARE_BYTES = 2 * 1024 * 1024
KEEP_ENDED_ROUNDS = 10  # flushes a share is kept after its window ended
MAX_PODS = 64  # pods named per share; more are counted together
OTHER_NAMESPACE = "(another namespace)"  # a pod a namespaced policy's owner may not see named


class LossMeter:
    """Records the kernel lost, measured on every line of the audit source (auditloss)."""

    def __init__(self) -> None:
        self.gaps = SerialGapTracker()
        self.kernel = KernelLossCounter()

    def feed(self, line: str) -> None:
        serial = parse_serial(line)
        if serial is not None:
            self.gaps.observe(serial)
        else:
            loss = parse_kernel_loss(line)
            if loss is not None:
                self.kernel.add(loss)

    @property
    def lost(self) -> int:
        """Both measures see printk suppression: the larger is the better reading."""
        return max(self.gaps.lost, self.kernel.suppressed)


PodKey = tuple[str, str, str, str]  # namespace, name, container, image


def _rule_bytes(rule: BehaviorRule) -> int:
    """About what a rule costs in the share's JSON (its strings plus the keys around them)."""
    return 48 + sum(len(str(value)) for value in vars(rule).values())


@dataclass
class _Share:
    owner: Desired
    behavior: Behavior = field(default_factory=Behavior)
    pods: dict[PodKey, int] = field(default_factory=dict)
    unattributed: int = 0
    size: int = 0  # about the JSON bytes of the rules (MAX_SHARE_BYTES)
    idle_rounds: int = 0  # flushes with nothing new since its window ended
    lost_at_start: int = 0
    dirty: bool = True
    merged_stored: bool = False  # the stored share (from before a restart) was read back


class BehaviorCollector:
    def __init__(
        self,
        kube: Kube | None,
        node: str,
        owner: Callable[[str], Desired | None],
        *,
        flush_seconds: float = 30.0,
        clock: Clock = utc_now,
    ) -> None:
        self.kube = kube
        self.node = node
        self.owner = owner
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.loss = LossMeter()
        self._shares: dict[str, _Share] = {}

    def modeling(self, record: AuditRecord) -> Desired | None:
        """The ArmorProfile collecting this record, when it is a modelling profile's ALLOWED one."""
        if record.action != "ALLOWED":
            return None
        owner = self.owner(record.base_profile)
        if owner is None or owner.modeling:
            return owner
        # The window has ended: the agent takes the new (enforce) version as its own before
        # the kernel has loaded it, and the audit tail lags, so the modelling version's
        # last records are read after that. Enforce mode logs no ALLOWED record: one read
        # now, while this agent still holds the profile's share, is the model's.
        share = self._shares.get(owner.name)
        if owner.mode == "enforce" and share is not None and share.owner.uid == owner.uid:
            return share.owner
        return None

    def collect(self, record: AuditRecord, owner: Desired, attribution: Attribution | None = None) -> None:
        share = self._shares.get(owner.name)
        if share is None or share.owner.uid != owner.uid:
            share = self._shares[owner.name] = _Share(owner, lost_at_start=self.loss.lost)
        share.dirty = True
        self._count_pod(share, attribution)
        behavior = share.behavior
        rule = None
        if self._own(owner, attribution) and not is_runtime_process(
            record.fields.get("comm", ""), record.fields.get("exe", "")
        ):
            rule = observe(record.operation, record.klass, record.fields, record.profile, rewrite=generalise)
        new = rule is not None and rule not in behavior.rules
        cost = _rule_bytes(rule) if new and rule is not None else 0
        if rule is None or (new and (len(behavior) >= MAX_RULES or share.size + cost > MAX_SHARE_BYTES)):
            behavior.excluded += 1
            metrics.BEHAVIOR_RECORDS.labels("excluded").inc()
            return
        share.size += cost
        behavior.add(rule)
        metrics.BEHAVIOR_RECORDS.labels("collected").inc()

    @staticmethod
    def _own(owner: Desired, attribution: Attribution | None) -> bool:
        """A record counts only from a pod the policy may model: a namespaced policy's own
        namespace (another tenant's pod can name this profile, and must not shape its model),
        any pod for a cluster policy. A record whose pod is unknown is not counted for a
        namespaced policy. Without pod attribution (`attribution` None) all count."""
        if attribution is None or owner.policy is None or owner.policy.kind == api.VARMOR_CLUSTER_POLICY.kind:
            return True
        return attribution.pod is not None and attribution.pod.namespace == owner.policy.namespace

    @staticmethod
    def _count_pod(share: _Share, attribution: Attribution | None) -> None:
        """Which pod the record came from: named when the policy's owner may see it
        (`PolicyRef.may_name`), bounded to MAX_PODS per share."""
        pod = attribution.pod if attribution is not None else None
        if pod is None:
            share.unattributed += 1
            return
        policy = share.owner.policy
        if policy is not None and not policy.may_name(pod.namespace):
            key: PodKey = (OTHER_NAMESPACE, "", "", "")
        else:
            key = (pod.namespace, pod.name, pod.container, pod.image)
        if key not in share.pods and len(share.pods) >= MAX_PODS:
            key = ("", "(more pods)", "", "")
        share.pods[key] = share.pods.get(key, 0) + 1

    def _body(self, share: _Share, existing: JSON | None) -> JSON:
        share.behavior = collapse(share.behavior)
        storage, data = encode_model_data(share.behavior)
        owner = share.owner
        meta: JSON = {
            "name": f"{owner.name}.{self.node}",
            "namespace": owner.namespace,
            "labels": {api.MANAGED_BY_LABEL: "varmor", api.PROFILE_LABEL: owner.name},
            "ownerReferences": [
                {"apiVersion": api.API_VERSION, "kind": api.ARMOR_PROFILE.kind, "name": owner.name, "uid": owner.uid}
            ],
        }
        if existing is not None:
            meta["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.ARMOR_BEHAVIOR.kind,
            "metadata": meta,
            "spec": {
                "nodeName": self.node,
                "profileName": owner.name,
                "records": share.behavior.records + share.behavior.excluded,
                "lostRecords": max(0, self.loss.lost - share.lost_at_start) + share.behavior.lost,
                "excludedRecords": share.behavior.excluded,
                "unattributedRecords": share.unattributed,
                "pods": [
                    {"namespace": ns, "name": name, "container": container, "image": image, "records": count}
                    for (ns, name, container, image), count in sorted(share.pods.items())
                ],
                "updateTime": now_rfc3339(self.clock),
            },
            "storageType": storage,
            "data": data,
        }

    async def flush(self) -> None:
        """Write every changed share; a failed write stays dirty for the next round."""
        if self.kube is None:
            return
        for name, share in list(self._shares.items()):
            current = self.owner(name)
            if not share.dirty:
                # Written, and no longer collected: kept a few rounds (the audit tail lags
                # the window's end, and late records still belong to it), then let go.
                ended = current is None or not current.modeling or current.uid != share.owner.uid
                share.idle_rounds = share.idle_rounds + 1 if ended else 0
                if share.idle_rounds > KEEP_ENDED_ROUNDS:
                    self._shares.pop(name, None)
                continue
            try:
                await self._write(share)
                share.dirty = False
                metrics.BEHAVIOR_WRITES.labels("ok").inc()
            except ApiException as exc:
                metrics.BEHAVIOR_WRITES.labels("error").inc()
                log.warning("writing ArmorBehavior %s.%s failed: %s", name, self.node, exc.status)
                if exc.status == 404:  # the ArmorProfile (owner) is gone: so is the share
                    self._shares.pop(name, None)
            except ValueError as exc:  # nothing this share holds may stop the agent
                metrics.BEHAVIOR_WRITES.labels("error").inc()
                log.warning("writing ArmorBehavior %s.%s failed: %s", name, self.node, exc)

    async def _write(self, share: _Share) -> None:
        assert self.kube is not None
        owner = share.owner
        base = paths.custom_path(api.ARMOR_BEHAVIOR, owner.namespace, None)
        path = f"{base}/{owner.name}.{self.node}"
        for attempt in range(2):
            existing = await self._read(path)
            if existing is not None and not share.merged_stored:
                self._read_back(share, existing)
            share.merged_stored = True
            body = self._body(share, existing)
            try:
                if existing is None:
                    await self.kube.request("POST", base, body=body)
                else:
                    await self.kube.request("PUT", path, body=body)
                return
            except ApiException as exc:
                if exc.status != 409 or attempt:
                    raise

    @staticmethod
    def _read_back(share: _Share, existing: JSON) -> None:
        """Add what this node stored before (an agent restart) to what it collected since;
        a stored share that cannot be read (not one an agent writes) is overwritten."""
        try:
            stored = decode_model_data(existing)
        except ValueError as exc:
            log.warning(
                "the stored ArmorBehavior %s is unreadable (%s): replaced", existing["metadata"].get("name"), exc
            )
            return
        spec = existing.get("spec") or {}
        stored.lost = int(spec.get("lostRecords") or 0)
        stored.excluded = int(spec.get("excludedRecords") or 0)
        stored.records = int(spec.get("records") or 0) - stored.excluded
        share.behavior.merge(stored)
        share.size = sum(_rule_bytes(rule) for rule in share.behavior.rules)
        share.unattributed += int(spec.get("unattributedRecords") or 0)
        for pod in spec.get("pods") or []:
            ns, name, container, image = (str(pod.get(k) or "") for k in ("namespace", "name", "container", "image"))
            share.pods[(ns, name, container, image)] = share.pods.get((ns, name, container, image), 0) + int(
                pod.get("records") or 0
            )

    async def _read(self, path: str) -> JSON | None:
        assert self.kube is not None
        try:
            found: JSON = await self.kube.request("GET", path)
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.flush_seconds)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())  # what was collected since the last round
