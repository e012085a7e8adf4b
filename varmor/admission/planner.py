"""Pure patch planner: the JSON patch that attaches a policy's profile to an object.

No I/O, no clocks: the webhook, the leader's rollouts and the unprotected-workload audit
all call these functions, so the three always agree on what "protected" means. Which
policy applies is `admission.selection`. Every container kind is confined; opt-outs only
where the policy allows them (see `plan`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from varmor import api
from varmor.admission.objects import Container, ObjectMeta, ObjectView, PlanError, SpecView, apparmor_of, view_of
from varmor.admission.selection import Candidate

__all__ = ["PlanError"]  # re-exported: callers of the planner catch it from here

JsonPatchOp = dict[str, Any]

LOCALHOST = "Localhost"
UNCONFINED_TYPE = "Unconfined"
EPHEMERAL_SUBRESOURCE = "ephemeralcontainers"
# Module-level copies for the per-container loop of `plan` (admission hot path).
_K8S_PREFIX = api.K8S_APPARMOR_ANNOTATION_PREFIX
_VARMOR_PREFIX = api.VARMOR_APPARMOR_ANNOTATION_PREFIX
_UNCONFINED = api.UNCONFINED
_NO_ANNOTATIONS: dict[str, str] = {}
_NO_CONTAINERS: list[Container] = []


# -- patch planning -----------------------------------------------------------------


def escape(token: str) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return token.replace("~", "~0").replace("/", "~1")


_POD_POINTERS = ("/metadata", "/spec")
_TEMPLATE_POINTERS = ("/spec/template/metadata", "/spec/template/spec")
# (metadata pointer, pod spec pointer) of the pod (template) inside an object of each kind.
POINTERS = {kind: _POD_POINTERS if kind == "Pod" else _TEMPLATE_POINTERS for kind in api.TARGET_KINDS}


def effective_localhost(meta: ObjectMeta | None, spec: SpecView, container: Container) -> str | None:
    """The Localhost profile `container` will run under, if any: its own field, else the beta
    annotation (Kubernetes applies it to every container kind by name), else the pod's field."""
    prof = apparmor_of(container.security_context)
    if prof is not None and prof.type:
        return prof.localhost_profile if prof.type == LOCALHOST else None
    annotations = (meta.annotations if meta is not None else None) or {}
    value = annotations.get(api.K8S_APPARMOR_ANNOTATION_PREFIX + container.name, "")
    if value.startswith("localhost/"):
        return value.removeprefix("localhost/")
    pod_prof = apparmor_of(spec.security_context)
    return pod_prof.localhost_profile if pod_prof is not None and pod_prof.type == LOCALHOST else None


def _paths(kind: str) -> tuple[str, str]:
    pointers = POINTERS.get(kind)
    if pointers is None:
        raise PlanError(f"unsupported kind {kind!r}")
    return pointers


def pod_parts(kind: str, obj: ObjectView) -> tuple[ObjectMeta | None, SpecView | None]:
    """(pod metadata, pod spec) of a Pod, or of a workload's pod template; None where absent."""
    if kind == "Pod":
        return obj.metadata, obj.spec
    if obj.spec is None:
        raise PlanError(f"{kind} has no spec")
    template = obj.spec.template
    return (None, None) if template is None else (template.metadata, template.spec)


@dataclass(slots=True)
class Plan:
    """The patch plus what it means, for metrics, warnings and status."""

    ops: tuple[JsonPatchOp, ...] = ()
    confined: tuple[str, ...] = ()  # containers carrying the profile once patched
    opted_out: tuple[str, ...] = ()  # containers the user left unconfined, as the policy allows
    overridden: tuple[str, ...] = ()  # opt-outs the policy does not allow: confined all the same
    unsupported: str | None = None  # why nothing can be confined (e.g. Windows pods)


def _annotation_ops(meta_path: str, meta: ObjectMeta | None, changes: dict[str, str]) -> list[JsonPatchOp]:
    """`add` ops setting `changes` in the annotations, creating missing maps as needed."""
    if meta is None:
        return [{"op": "add", "path": meta_path, "value": {"annotations": changes}}]
    if meta.annotations is None:
        return [{"op": "add", "path": meta_path + "/annotations", "value": changes}]
    prefix = meta_path + "/annotations/"
    return [{"op": "add", "path": prefix + escape(k), "value": v} for k, v in sorted(changes.items())]


def _groups(pod_spec: SpecView, spec_path: str, ephemeral_only: bool) -> list[tuple[list[Container], str]]:
    """(containers, JSON pointer prefix) of each container list the plan covers."""
    out: list[tuple[list[Container], str]] = []
    if not ephemeral_only:
        out.append((pod_spec.containers or _NO_CONTAINERS, spec_path + "/containers/"))
        if pod_spec.init_containers:
            out.append((pod_spec.init_containers, spec_path + "/initContainers/"))
    if pod_spec.ephemeral_containers:
        out.append((pod_spec.ephemeral_containers, spec_path + "/ephemeralContainers/"))
    return out


def plan(
    kind: str,
    obj: Mapping[str, Any] | ObjectView,
    profile_name: str,
    containers: Sequence[str] = (),
    use_field: bool = True,
    *,
    beta_annotation: bool = False,
    allow_opt_out: bool = False,
    ephemeral_only: bool = False,
    existing: Collection[str] = (),
) -> Plan:
    """Patch confining the containers of `obj` (all kinds: regular, init, which include
    native sidecars, and ephemeral; or those named) with `profile_name`. `use_field` selects
    `securityContext.appArmorProfile` (Kubernetes >= 1.30; plus vArmor's annotation) over
    the beta annotation (which Kubernetes applies to init containers by name too);
    `beta_annotation` writes the beta annotation with the field (an API server < 1.30 drops it).

    Opt-out: either annotation set to `unconfined`, or `appArmorProfile: Unconfined` on the
    container (on the pod, when the container sets none). With `allow_opt_out` the container
    is left alone (`opted_out`); without, it is confined like any other (`overridden`): its
    `appArmorProfile` (Unconfined, RuntimeDefault, another Localhost) becomes Localhost
    `profile_name` and both annotations, where present, `localhost/<profile_name>`. The
    pod-level field stays: the container's takes precedence.

    `ephemeral_only`: an update through `pods/ephemeralcontainers`, which may only add
    ephemeral containers: those not in `existing` get the field (annotations cannot change
    there, so before 1.30 the plan is `unsupported`). Raises PlanError when `obj` is not
    shaped like a `kind`."""
    # The admission hot path: written for few Python operations per container.
    meta_path, spec_path = _paths(kind)
    meta, pod_spec = pod_parts(kind, view_of(obj))
    if pod_spec is None:
        return Plan(unsupported="no pod template")
    if pod_spec.os is not None and pod_spec.os.name == "windows":
        return Plan(unsupported="Windows pods cannot use AppArmor")
    if ephemeral_only and not use_field:
        return Plan(unsupported="ephemeral containers cannot get a profile through annotations (Kubernetes < 1.30)")
    ann = (None if meta is None else meta.annotations) or _NO_ANNOTATIONS
    pod_field = apparmor_of(pod_spec.security_context)
    pod_unconfined = pod_field is not None and pod_field.type == UNCONFINED_TYPE
    localhost = "localhost/" + profile_name
    ops: list[JsonPatchOp] = []
    ann_changes: dict[str, str] = {}
    confined: list[str] = []
    opted_out: list[str] = []
    overridden: list[str] = []
    for group, group_path in _groups(pod_spec, spec_path, ephemeral_only):
        for i, container in enumerate(group):
            name = container.name
            if (containers and name not in containers) or (existing and name in existing):
                continue
            context = container.security_context
            field_now = None if context is None else context.app_armor_profile
            varmor_key = _VARMOR_PREFIX + name
            k8s_key = _K8S_PREFIX + name
            varmor_now = ann.get(varmor_key)
            k8s_now = ann.get(k8s_key)
            if (
                varmor_now == _UNCONFINED
                or k8s_now == _UNCONFINED
                or (pod_unconfined if field_now is None else field_now.type == UNCONFINED_TYPE)
            ):
                if allow_opt_out:
                    opted_out.append(name)
                    continue
                overridden.append(name)
            confined.append(name)
            if not ephemeral_only:
                # The API server rejects a pod whose annotation and field disagree.
                if (use_field or varmor_now is not None) and varmor_now != localhost:
                    ann_changes[varmor_key] = localhost
                if (k8s_now is not None or not use_field or beta_annotation) and k8s_now != localhost:
                    ann_changes[k8s_key] = localhost
            if not use_field:
                continue
            if field_now is None or field_now.type != LOCALHOST or field_now.localhost_profile != profile_name:
                desired = {"type": LOCALHOST, "localhostProfile": profile_name}
                if context is None:
                    ops.append(
                        {"op": "add", "path": f"{group_path}{i}/securityContext", "value": {"appArmorProfile": desired}}
                    )
                else:
                    ops.append(
                        {"op": "add", "path": f"{group_path}{i}/securityContext/appArmorProfile", "value": desired}
                    )
    if ann_changes:
        ops[:0] = _annotation_ops(meta_path, meta, ann_changes)
    return Plan(tuple(ops), tuple(confined), tuple(opted_out), tuple(overridden))


def plan_for(
    candidate: Candidate,
    kind: str,
    obj: Mapping[str, Any] | ObjectView,
    use_field: bool = True,
    *,
    beta_annotation: bool = False,
    sub_resource: str = "",
    old: Mapping[str, Any] | ObjectView | None = None,
) -> Plan:
    """`plan` with the policy's profile, containers and opt-out rule (for the ephemeral
    containers subresource: the ephemeral containers `old` lacks)."""
    assert candidate.profile_name is not None
    ephemeral = sub_resource == EPHEMERAL_SUBRESOURCE
    old_spec = pod_parts("Pod", view_of(old))[1] if ephemeral and old is not None else None
    existing = {c.name for c in (old_spec.ephemeral_containers if old_spec is not None else None) or ()}
    return plan(
        kind,
        obj,
        candidate.profile_name,
        candidate.containers,
        use_field,
        beta_annotation=beta_annotation,
        allow_opt_out=candidate.allow_opt_out,
        ephemeral_only=ephemeral,
        existing=existing,
    )


def plan_patch(
    obj_kind: str,
    obj: Mapping[str, Any] | ObjectView,
    profile_name: str,
    containers: Sequence[str] = (),
    use_field: bool = True,
    beta_annotation: bool = False,
) -> list[JsonPatchOp]:
    """The RFC 6902 ops of `plan` (empty when `obj` already carries the profile)."""
    return list(plan(obj_kind, obj, profile_name, containers, use_field, beta_annotation=beta_annotation).ops)


def _ours(value: Any, profile_name: str | None) -> bool:
    if not isinstance(value, str):
        return False
    name = value.removeprefix("localhost/") if value.startswith("localhost/") else None
    if name is None:
        return False
    return name == profile_name if profile_name else name.startswith(api.PROFILE_PREFIX)


def remove_patch(
    obj_kind: str, obj: Mapping[str, Any] | ObjectView, profile_name: str | None = None
) -> list[JsonPatchOp]:
    """Ops removing what varmor attached (`profile_name`, or any `varmor-*` profile).

    For rollbacks of workload templates (Pods are immutable here). Opt-out annotations
    (`unconfined`) the plan did not overwrite are the user's and stay."""
    meta_path, spec_path = _paths(obj_kind)
    meta, pod_spec = pod_parts(obj_kind, view_of(obj))
    ops: list[JsonPatchOp] = []
    annotations = (meta.annotations if meta is not None else None) or _NO_ANNOTATIONS
    for key, value in sorted(annotations.items()):
        prefixed = key.startswith((api.K8S_APPARMOR_ANNOTATION_PREFIX, api.VARMOR_APPARMOR_ANNOTATION_PREFIX))
        if prefixed and _ours(value, profile_name):
            ops.append({"op": "remove", "path": f"{meta_path}/annotations/{escape(key)}"})
    for group, group_path in _groups(pod_spec, spec_path, False) if pod_spec is not None else ():
        for i, container in enumerate(group):
            prof = apparmor_of(container.security_context)
            if prof and prof.type == LOCALHOST and _ours(f"localhost/{prof.localhost_profile}", profile_name):
                ops.append({"op": "remove", "path": f"{group_path}{i}/securityContext/appArmorProfile"})
    return ops
