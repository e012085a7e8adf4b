"""Ephemeral containers (`kubectl debug`): the profile for one added to a running Pod.

They are added through the `pods/ephemeralcontainers` subresource (an UPDATE of the Pod),
which may change nothing but the new ephemeral containers: so they get
`securityContext.appArmorProfile` only, never annotations (before Kubernetes 1.30 they
cannot be confined, and the plan says so).

Which profile: the one of the Pod policy that selects the Pod, else the varmor profile the
Pod's own containers already run under. The second case covers Pods of Deployments,
StatefulSets and DaemonSets, which a workload policy selects through its template, not the
Pod's labels; the policy owning that profile decides on opt-outs. Pure: the webhook calls
`plan_ephemeral` with its policy index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varmor import api
from varmor.admission.objects import ObjectView, apparmor_of, view_of
from varmor.admission.planner import EPHEMERAL_SUBRESOURCE, LOCALHOST, Plan, plan_for, pod_parts
from varmor.admission.selection import Candidate, PolicyIndex


def inherited_profile(pod: ObjectView) -> str | None:
    """The varmor profile the Pod's regular and init containers run under (the first found)."""
    meta, spec = pod_parts("Pod", pod)
    if spec is None:
        return None
    annotations = (meta.annotations if meta is not None else None) or {}
    for container in (spec.containers or []) + (spec.init_containers or []):
        prof = apparmor_of(container.security_context)
        if (
            prof is not None
            and prof.type == LOCALHOST
            and (prof.localhost_profile or "").startswith(api.PROFILE_PREFIX)
        ):
            return prof.localhost_profile
        value = annotations.get(api.K8S_APPARMOR_ANNOTATION_PREFIX + container.name, "")
        if value.startswith("localhost/" + api.PROFILE_PREFIX):
            return value.removeprefix("localhost/")
    return None


def _owner(index: PolicyIndex, profile: str, namespace: str) -> Candidate | None:
    """The accepted policy (any target kind, cluster or in `namespace`) whose profile it is."""
    for kind in api.TARGET_KINDS:
        for cand in index.candidates(kind, namespace):
            if cand.profile_name == profile:
                return cand
    return None


def plan_ephemeral(
    index: PolicyIndex,
    pod: Mapping[str, Any] | ObjectView,
    old: Mapping[str, Any] | ObjectView | None,
    namespace: str,
    use_field: bool = True,
) -> tuple[Candidate | None, Plan]:
    """(the policy whose profile applies, the plan) for an update of `pods/ephemeralcontainers`;
    (None, an empty Plan) when no policy applies to the Pod."""
    view = view_of(pod)
    sel = index.select("Pod", view, namespace)
    cand = sel.winner.candidate if sel.winner is not None else None
    if cand is None:
        inherited = inherited_profile(view)
        cand = _owner(index, inherited, namespace) if inherited is not None else None
    if cand is None:
        return None, Plan()
    return cand, plan_for(cand, "Pod", view, use_field, sub_resource=EPHEMERAL_SUBRESOURCE, old=old)
