"""The mutating decision: planner output turned into an admission answer, plus metrics.

No aiohttp here: `decide` takes a parsed request and returns what to answer, so the
hot path is testable and benchmarkable without a server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from varmor import api
from varmor.admission.ephemeral import plan_ephemeral
from varmor.admission.planner import EPHEMERAL_SUBRESOURCE, JsonPatchOp, Plan, plan_for
from varmor.admission.review import MutationRequest
from varmor.admission.selection import Match, PolicyIndex, Selection
from varmor.webhook import metrics

MUTATED_KINDS = {"Pod": "", "Deployment": "apps", "StatefulSet": "apps", "DaemonSet": "apps"}
ConflictSink = Callable[[Selection, MutationRequest], None]


@dataclass
class MutationState:
    """What every replica keeps current: the policy index and the server's AppArmor API."""

    index: PolicyIndex = field(default_factory=PolicyIndex)
    synced: bool = False
    use_field: bool = True
    beta_annotation: bool = False  # with the field: after an upgrade from a release without it
    excluded_namespaces: frozenset[str] = frozenset({"kube-system"})
    on_conflict: ConflictSink | None = None


@dataclass(slots=True)
class Decision:
    result: str  # metric label
    patch: tuple[JsonPatchOp, ...] = ()
    warnings: tuple[str, ...] = ()


def _unconfined(kind: str, reason: str) -> None:
    metrics.UNCONFINED.labels(kind, reason).inc()


def _policy_ref(sel_key: tuple[str, str]) -> str:
    ns, name = sel_key
    return f"{ns}/{name}" if ns else name


def decide(state: MutationState, req: MutationRequest) -> Decision:
    """Raises PlanError when the object is not shaped like its kind (answered as 400)."""
    gvk, obj, operation = req.gvk, req.obj, req.operation
    kind = gvk.kind
    # kubectl debug: an UPDATE of pods/ephemeralcontainers adds ephemeral containers.
    ephemeral = req.sub_resource == EPHEMERAL_SUBRESOURCE and kind == "Pod" and operation == "UPDATE"
    if MUTATED_KINDS.get(kind) != gvk.group or (req.sub_resource and not ephemeral) or obj is None:
        return Decision("ignored")
    if not ephemeral and operation != "CREATE" and (operation != "UPDATE" or kind == "Pod"):
        return Decision("ignored")
    if req.namespace in state.excluded_namespaces:
        return Decision("excluded")
    if not state.synced:
        _unconfined(kind, "not_synced")
        return Decision("not_synced", warnings=("varmor: policies not loaded yet; admitted without AppArmor",))
    if ephemeral:
        owner, result = plan_ephemeral(state.index, obj, req.old_obj, req.namespace, state.use_field)
        if owner is None:
            return Decision("not_selected")
        return _qualified(state, req, Selection(Match(owner, False)), result)
    sel = state.index.select(kind, obj, req.namespace)
    if sel.winner is None:
        if not sel.pending:
            return Decision("not_selected")
        _unconfined(kind, "policy_pending")
        ref = _policy_ref(sel.pending[0].candidate.key)
        return Decision("policy_pending", warnings=(f"varmor: policy {ref} is not ready; admitted without AppArmor",))
    cand = sel.winner.candidate
    assert cand.profile_name is not None
    result = plan_for(cand, kind, obj, state.use_field, beta_annotation=state.beta_annotation)
    if not result.ops or sel.losers or result.unsupported or result.opted_out or result.overridden:
        return _qualified(state, req, sel, result)
    if not result.confined:
        return _qualified(state, req, sel, result)
    metrics.count_mutation(kind)
    return Decision("mutated", result.ops)


def _qualified(state: MutationState, req: MutationRequest, sel: Selection, result: Plan) -> Decision:
    """The less common answers: conflicts, opt-outs and what cannot be confined, with warnings."""
    kind = req.kind
    assert sel.winner is not None
    cand = sel.winner.candidate
    warnings: list[str] = []
    if sel.losers:
        metrics.CONFLICTS.labels(kind).inc()
        losers = ", ".join(_policy_ref(m.candidate.key) for m in sel.losers)
        warnings.append(f"varmor: policy {_policy_ref(cand.key)} takes precedence over {losers}")
        if state.on_conflict is not None and not req.dry_run:
            state.on_conflict(sel, req)
    if result.overridden:
        warnings.append(
            f"varmor: policy {_policy_ref(cand.key)} does not allow opting out; "
            f"{', '.join(result.overridden)} get its profile"
        )
    if result.unsupported:
        _unconfined(kind, "unsupported")
        warnings.append(f"varmor: {result.unsupported}; admitted without AppArmor")
    elif result.opted_out:
        _unconfined(kind, "opted_out")
    elif not result.confined:
        _unconfined(kind, "no_matching_container")
        warnings.append(f"varmor: no container matches policy {_policy_ref(cand.key)}'s target.containers")
    if not result.ops:
        return Decision("unchanged", warnings=tuple(warnings))
    metrics.count_mutation(kind)
    return Decision("mutated", result.ops, tuple(warnings))


def excluded_namespaces(install_namespace: str) -> frozenset[str]:
    return frozenset({"kube-system", install_namespace})


assert set(MUTATED_KINDS) == set(api.TARGET_KINDS)
