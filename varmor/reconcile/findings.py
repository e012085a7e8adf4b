"""The audit's findings in a policy's status (pure): `unprotectedWorkloads` and the
`Unprotected` and `Conflict` conditions.

The audit (reconcile/audit.py) finds them; the policy controller writes them with the
rest of the status, so a policy status has exactly one writer and no two writes race.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
AUDIT_CONDITIONS = frozenset({"Unprotected", "Conflict"})


@dataclass(frozen=True)
class Findings:
    """One policy's share of an audit pass."""

    unprotected: int = 0
    unprotected_examples: tuple[str, ...] = ()
    lost: int = 0  # workloads it selects that take another policy's profile
    lost_examples: tuple[str, ...] = ()


def _condition(
    ctype: str, when_true: tuple[str, str] | None, when_false: tuple[str, str], previous: JSON | None, now: str
) -> JSON | None:
    """True with `when_true` (reason, message), else False with `when_false` once it has
    ever been True (None: leave it absent)."""
    if when_true is None and previous is None:
        return None
    status, (reason, message) = ("True", when_true) if when_true is not None else ("False", when_false)
    same = previous is not None and previous.get("status") == status
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": previous.get("lastTransitionTime", now) if same and previous else now,
    }


def unprotected_condition(count: int, examples: tuple[str, ...], previous: JSON | None, now: str) -> JSON | None:
    """The `Unprotected` condition for `count` (None: leave it absent)."""
    when_true = None
    if count:
        when_true = (
            "AdmittedWithoutProfile",
            f"{count} selected workload(s) run without the profile ({', '.join(examples)}; each names why): "
            "opted out, admitted while the webhook was unavailable, or older than the policy; recreate "
            "them, set updateExistingWorkloads, or remove the opt-out",
        )
    return _condition(
        "Unprotected", when_true, ("AllProtected", "every selected workload carries the profile"), previous, now
    )


def conflict_condition(count: int, examples: tuple[str, ...], previous: JSON | None, now: str) -> JSON | None:
    """The `Conflict` condition on a policy that loses workloads to one taking precedence."""
    when_true = None
    if count:
        when_true = (
            "LostToPolicy",
            f"{count} workload(s) this policy selects get another policy's profile, which takes precedence "
            f"({', '.join(examples)}; see the Conflict events for which one): make the targets disjoint",
        )
    return _condition(
        "Conflict", when_true, ("NoConflict", "no other policy takes precedence over this one"), previous, now
    )


def audit_conditions(findings: Findings, previous: Mapping[str, JSON], now: str) -> list[JSON]:
    """The audit's conditions for a policy whose previous conditions, by type, are `previous`."""
    wanted = (
        unprotected_condition(findings.unprotected, findings.unprotected_examples, previous.get("Unprotected"), now),
        conflict_condition(findings.lost, findings.lost_examples, previous.get("Conflict"), now),
    )
    return [c for c in wanted if c is not None]
