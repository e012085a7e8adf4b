"""Pure mutation planner: which policy applies to an object, and the JSON patch for it.

No I/O, no clocks: the webhook, the leader's rollouts and the unprotected-workload audit
all call these functions, so the three always agree on what "protected" means.

Precedence (never map order): cluster policies before namespaced ones; within a tier a
`target.name` match beats a `target.selector` match; remaining ties go to the oldest
policy (creationTimestamp), then namespace, name and uid, so adding a policy never
steals a workload from an existing one. Only policies whose `status.profileName` is set
(the leader accepted them) can win; matching policies without it are reported as pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from varmor import api
from varmor.webhook.selector import LabelPredicate, SelectorError, compile_selector

JsonPatchOp = dict[str, Any]

LOCALHOST = "Localhost"
UNCONFINED_TYPE = "Unconfined"
# Module-level copies for the per-container loop of `plan` (admission hot path).
_K8S_PREFIX = api.K8S_APPARMOR_ANNOTATION_PREFIX
_VARMOR_PREFIX = api.VARMOR_APPARMOR_ANNOTATION_PREFIX
_UNCONFINED = api.UNCONFINED


class PlanError(ValueError):
    """The object is not shaped like the kind it claims to be."""


# -- policy selection ---------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A policy reduced to what matching needs; built once per policy version."""

    cluster: bool
    namespace: str  # "" for cluster policies
    name: str
    uid: str
    created: str
    kind: str
    target_name: str | None
    selector: LabelPredicate | None = field(compare=False, repr=False)
    containers: tuple[str, ...]
    profile_name: str | None
    policy: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def matches(self, kind: str, obj: Mapping[str, Any], namespace: str) -> bool | None:
        """None if it does not match, else True for a name match and False for a selector match."""
        if kind != self.kind or (not self.cluster and namespace != self.namespace):
            return None
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        if self.target_name is not None:
            return True if meta.get("name") == self.target_name else None
        labels = meta.get("labels")
        labels = labels if isinstance(labels, dict) else {}
        if self.selector is not None and self.selector(labels):
            return False
        return None


def candidate_from(policy: Mapping[str, Any]) -> Candidate | None:
    """A Candidate, or None for a policy too malformed to ever match anything."""
    meta = policy.get("metadata") or {}
    spec = policy.get("spec") or {}
    target = spec.get("target") if isinstance(spec, dict) else None
    if not isinstance(meta, dict) or not isinstance(target, dict):
        return None
    kind = target.get("kind")
    if kind not in api.TARGET_KINDS or not isinstance(meta.get("name"), str):
        return None
    target_name = target.get("name")
    selector: LabelPredicate | None = None
    if target_name is not None:
        if not isinstance(target_name, str) or not target_name or target.get("selector") is not None:
            return None
    else:
        try:
            selector = compile_selector(target.get("selector"))
        except SelectorError:
            return None
    containers = target.get("containers") or []
    if not isinstance(containers, list) or not all(isinstance(c, str) for c in containers):
        return None
    status = policy.get("status")
    profile = status.get("profileName") if isinstance(status, dict) else None
    cluster = policy.get("kind") == api.VARMOR_CLUSTER_POLICY.kind
    return Candidate(
        cluster=cluster,
        namespace="" if cluster else str(meta.get("namespace") or ""),
        name=meta["name"],
        uid=str(meta.get("uid") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        kind=kind,
        target_name=target_name,
        selector=selector,
        containers=tuple(containers),
        profile_name=profile if isinstance(profile, str) and profile else None,
        policy=policy,
    )


@dataclass(slots=True)
class Match:
    candidate: Candidate
    by_name: bool

    @property
    def rank(self) -> tuple[int, int, str, str, str, str]:
        c = self.candidate
        return (0 if c.cluster else 1, 0 if self.by_name else 1, c.created, c.namespace, c.name, c.uid)


@dataclass(slots=True)
class Selection:
    """The winning policy (if any), the other eligible matches, and matches still pending."""

    winner: Match | None
    losers: tuple[Match, ...] = ()
    pending: tuple[Match, ...] = ()

    @property
    def selected(self) -> bool:
        return self.winner is not None or bool(self.pending)


def _select(candidates: Iterable[Candidate], kind: str, obj: Mapping[str, Any], namespace: str) -> Selection:
    eligible: list[Match] = []
    pending: list[Match] = []
    for cand in candidates:
        by_name = cand.matches(kind, obj, namespace)
        if by_name is None:
            continue
        (eligible if cand.profile_name else pending).append(Match(cand, by_name))
    if len(pending) > 1:
        pending.sort(key=lambda m: m.rank)
    if not eligible:
        return Selection(None, (), tuple(pending))
    if len(eligible) > 1:
        eligible.sort(key=lambda m: m.rank)
    return Selection(eligible[0], tuple(eligible[1:]), tuple(pending))


def select_policy(
    policies: Iterable[Mapping[str, Any]], kind: str, obj: Mapping[str, Any], namespace: str
) -> Selection:
    """Pick the policy for `obj` (of `kind`, in `namespace`) from raw policy objects."""
    cands = (c for c in map(candidate_from, policies) if c is not None)
    return _select(cands, kind, obj, namespace)


class PolicyIndex:
    """Policies pre-parsed and grouped by (kind, namespace), for the admission hot path.

    Only cluster policies of the kind and namespaced policies of the request's namespace
    are ever examined, so admission cost does not grow with policies elsewhere.
    """

    def __init__(self, policies: Iterable[Mapping[str, Any]] = ()) -> None:
        grouped: dict[tuple[str, str], list[Candidate]] = {}
        for policy in policies:
            cand = candidate_from(policy)
            if cand is not None:
                grouped.setdefault((cand.kind, cand.namespace), []).append(cand)
        self._groups = {k: tuple(v) for k, v in grouped.items()}

    def candidates(self, kind: str, namespace: str) -> tuple[Candidate, ...]:
        cluster = self._groups.get((kind, ""), ())
        return cluster + self._groups.get((kind, namespace), ()) if namespace else cluster

    def select(self, kind: str, obj: Mapping[str, Any], namespace: str) -> Selection:
        return _select(self.candidates(kind, namespace), kind, obj, namespace)

    def __len__(self) -> int:
        return sum(len(v) for v in self._groups.values())


# -- patch planning -----------------------------------------------------------------


def escape(token: str) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def _paths(kind: str) -> tuple[str, str]:
    """(metadata pointer, pod spec pointer) of the pod (template) inside an object of `kind`."""
    if kind == "Pod":
        return "/metadata", "/spec"
    if kind in api.TARGET_KINDS:
        return "/spec/template/metadata", "/spec/template/spec"
    raise PlanError(f"unsupported kind {kind!r}")


def _pod_parts(kind: str, obj: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(pod metadata or None, pod spec or None), type-checked."""
    if kind == "Pod":
        holder: Any = obj
    else:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise PlanError(f"{kind} has no spec")
        holder = spec.get("template")
        if holder is None:
            return None, None
        if not isinstance(holder, dict):
            raise PlanError(f"{kind} spec.template is not an object")
    meta, pod_spec = holder.get("metadata"), holder.get("spec")
    if meta is not None and not isinstance(meta, dict):
        raise PlanError("metadata is not an object")
    if pod_spec is not None and not isinstance(pod_spec, dict):
        raise PlanError("pod spec is not an object")
    return meta, pod_spec


def _annotations(meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    ann = meta.get("annotations") if meta else None
    if ann is None:
        return {}
    if not isinstance(ann, dict):
        raise PlanError("annotations is not an object")
    return ann


def _containers(pod_spec: Mapping[str, Any] | None) -> Sequence[Mapping[str, Any]]:
    containers = pod_spec.get("containers") if pod_spec else None
    if containers is None:
        return ()
    if not isinstance(containers, list):
        raise PlanError("containers must be a list of objects with a name")
    for c in containers:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise PlanError("containers must be a list of objects with a name")
    return containers


def _apparmor_field(holder: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    sc = holder.get("securityContext") if holder else None
    if sc is None:
        return None
    if not isinstance(sc, dict):
        raise PlanError("securityContext is not an object")
    prof = sc.get("appArmorProfile")
    if prof is not None and not isinstance(prof, dict):
        raise PlanError("appArmorProfile is not an object")
    return prof


@dataclass(slots=True)
class Plan:
    """The patch plus what it means, for metrics and status."""

    ops: tuple[JsonPatchOp, ...] = ()
    confined: tuple[str, ...] = ()  # containers carrying the profile once patched
    opted_out: tuple[str, ...] = ()  # containers the user explicitly left unconfined
    unsupported: str | None = None  # why nothing can be confined (e.g. Windows pods)


def _annotation_ops(meta_path: str, meta: Mapping[str, Any] | None, changes: Mapping[str, str]) -> list[JsonPatchOp]:
    """`add` ops setting `changes` in the annotations, creating missing maps as needed."""
    if not changes:
        return []
    if meta is None:
        return [{"op": "add", "path": meta_path, "value": {"annotations": dict(changes)}}]
    if meta.get("annotations") is None:
        return [{"op": "add", "path": f"{meta_path}/annotations", "value": dict(changes)}]
    return [
        {"op": "add", "path": f"{meta_path}/annotations/{escape(k)}", "value": v} for k, v in sorted(changes.items())
    ]


def plan(
    kind: str,
    obj: Mapping[str, Any],
    profile_name: str,
    containers: Sequence[str] = (),
    use_field: bool = True,
) -> Plan:
    """Patch confining the regular containers of `obj` (all, or those named) with `profile_name`.

    `use_field` selects `securityContext.appArmorProfile` (Kubernetes >= 1.30) over the
    beta annotation. Init and ephemeral containers are left alone. Raises PlanError when
    `obj` is not shaped like a `kind`.
    """
    meta_path, spec_path = _paths(kind)
    meta, pod_spec = _pod_parts(kind, obj)
    if pod_spec is None:
        return Plan(unsupported="no pod template")
    os_spec = pod_spec.get("os")
    if isinstance(os_spec, dict) and os_spec.get("name") == "windows":
        return Plan(unsupported="Windows pods cannot use AppArmor")
    ann = _annotations(meta)
    pod_field = _apparmor_field(pod_spec)
    pod_unconfined = bool(pod_field and pod_field.get("type") == UNCONFINED_TYPE)
    wanted = set(containers)
    localhost = f"localhost/{profile_name}"
    desired_field = {"type": LOCALHOST, "localhostProfile": profile_name}
    ops: list[JsonPatchOp] = []
    ann_changes: dict[str, str] = {}
    confined: list[str] = []
    opted_out: list[str] = []
    for i, container in enumerate(_containers(pod_spec)):
        name = container["name"]
        if wanted and name not in wanted:
            continue
        k8s_key = _K8S_PREFIX + name
        varmor_key = _VARMOR_PREFIX + name
        field_now = _apparmor_field(container)
        varmor_now, k8s_now = ann.get(varmor_key), ann.get(k8s_key)
        if (
            varmor_now == _UNCONFINED
            or k8s_now == _UNCONFINED
            or (field_now is not None and field_now.get("type") == UNCONFINED_TYPE)
            or (pod_unconfined and field_now is None)
        ):
            opted_out.append(name)
            continue
        confined.append(name)
        if use_field:
            if varmor_now != localhost:
                ann_changes[varmor_key] = localhost
            # The API server rejects a pod whose annotation and field disagree.
            if k8s_key in ann and k8s_now != localhost:
                ann_changes[k8s_key] = localhost
            if field_now is None or dict(field_now) != desired_field:
                base = f"{spec_path}/containers/{i}/securityContext"
                if container.get("securityContext") is None:
                    ops.append({"op": "add", "path": base, "value": {"appArmorProfile": dict(desired_field)}})
                else:
                    ops.append({"op": "add", "path": f"{base}/appArmorProfile", "value": dict(desired_field)})
        elif k8s_now != localhost:
            ann_changes[k8s_key] = localhost
    return Plan(
        ops=tuple(_annotation_ops(meta_path, meta, ann_changes) + ops),
        confined=tuple(confined),
        opted_out=tuple(opted_out),
    )


def plan_patch(
    obj_kind: str,
    obj: Mapping[str, Any],
    profile_name: str,
    containers: Sequence[str] = (),
    use_field: bool = True,
) -> list[JsonPatchOp]:
    """The RFC 6902 ops of `plan` (empty when `obj` already carries the profile)."""
    return list(plan(obj_kind, obj, profile_name, containers, use_field).ops)


def _ours(value: Any, profile_name: str | None) -> bool:
    if not isinstance(value, str):
        return False
    name = value.removeprefix("localhost/") if value.startswith("localhost/") else None
    if name is None:
        return False
    return name == profile_name if profile_name else name.startswith(api.PROFILE_PREFIX)


def remove_patch(obj_kind: str, obj: Mapping[str, Any], profile_name: str | None = None) -> list[JsonPatchOp]:
    """Ops removing what varmor attached (`profile_name`, or any `varmor-*` profile).

    For rollbacks of workload templates: Pods are immutable here. Opt-out annotations
    (`unconfined`) are the user's and stay.
    """
    meta_path, spec_path = _paths(obj_kind)
    meta, pod_spec = _pod_parts(obj_kind, obj)
    ops: list[JsonPatchOp] = []
    for key, value in sorted(_annotations(meta).items()):
        prefixed = key.startswith((api.K8S_APPARMOR_ANNOTATION_PREFIX, api.VARMOR_APPARMOR_ANNOTATION_PREFIX))
        if prefixed and _ours(value, profile_name):
            ops.append({"op": "remove", "path": f"{meta_path}/annotations/{escape(key)}"})
    for i, container in enumerate(_containers(pod_spec)):
        prof = _apparmor_field(container)
        if prof and prof.get("type") == LOCALHOST and _ours(f"localhost/{prof.get('localhostProfile')}", profile_name):
            ops.append({"op": "remove", "path": f"{spec_path}/containers/{i}/securityContext/appArmorProfile"})
    return ops
