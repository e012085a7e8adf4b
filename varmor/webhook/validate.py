"""The validating decision for policies: what the CRD's CEL rules cannot check.

The structural schema and CEL already reject most mistakes even when varmor is down;
here the full parser runs (rule IDs under the right list, absolute targets, profile-name
length, other enforcers), and every policy's profile is compiled by apparmor_parser
(raw rules, and targets that make child profiles), because only the compiler knows
whether it is valid, enforceable and affordable.

The compile is the one place an in-cluster caller can make the webhook spend CPU, so it
is bounded three ways: a compile budget (CPU-seconds and memory, per parser process), a
deadline inside the API server's webhook timeout, and a bounded queue (`slots` running,
`waiting` more) that answers "busy, retry" at once when full. Verdicts are cached by the
profile's sha256, slow and failing ones too, so repeating content costs nothing. A profile
that fails the budget or the deadline is refused, never allowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from varmor import api
from varmor.admission.nodereports import PodClaim, node_report_refusal, pod_to_look_up
from varmor.admission.review import ValidationRequest
from varmor.parser import DEADLINE, DEFAULT_BUDGET, CompileBudget, CompileResult, ParserNotFoundError, compile_profile
from varmor.pipeline import CompileError, compile_policy
from varmor.profile.builder import BuiltProfile

log = logging.getLogger(__name__)

POLICY_KINDS = {api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind}
BUSY = "varmor's webhook is busy compiling other policies; retry in a few seconds"
NO_PARSER = (
    "the generated profile was not compile-checked at admission (apparmor_parser is missing from "
    "varmor's image: a deployment error); the leader compiles it before writing its ArmorProfile"
)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    result: str = "allowed"
    code: int = 422


class PolicyValidator:
    """Validates policies; compiles each profile off the loop, bounded, with a verdict cache."""

    def __init__(
        self,
        install_namespace: str,
        *,
        budget: CompileBudget = DEFAULT_BUDGET,
        deadline: float = 4.0,
        slots: int = 2,
        waiting: int = 2,
        cache_size: int = 1024,
        node_report_accounts: frozenset[str] = frozenset(),
        pod_node: Callable[[PodClaim], Awaitable[str]] | None = None,
    ) -> None:
        self.install_namespace = install_namespace
        self.node_report_accounts = node_report_accounts
        self.pod_node = pod_node  # the node of a token's bound pod (tokens before 1.30 lack the node claim)
        self.budget = budget
        self.deadline = deadline  # seconds from receipt: the API server's timeout minus a margin
        self._slots = asyncio.Semaphore(slots)
        self._capacity = slots + waiting
        self._queued = 0  # compiles running or waiting for a slot
        self._cache: OrderedDict[str, CompileResult] = OrderedDict()
        self._cache_size = cache_size
        self.compiles = 0  # parser runs started (tests read it: a cached verdict starts none)

    @property
    def queued(self) -> int:
        return self._queued

    async def _node_report(self, req: ValidationRequest) -> Verdict:
        """An agent writes only its own node's ArmorNode and ArmorBehaviors (admission.nodereports)."""
        if req.operation not in ("CREATE", "UPDATE"):
            return Verdict(True, result="ignored")
        user = req.user
        meta = (req.obj or {}).get("metadata")
        name = req.name or (str(meta.get("name") or "") if isinstance(meta, dict) else "")
        if req.kind == api.ARMOR_BEHAVIOR.kind:  # a share reports for spec.nodeName (its name ends in it)
            spec = (req.obj or {}).get("spec")
            name = str(spec.get("nodeName") or "") if isinstance(spec, dict) else ""
        pod_node = ""
        claim = pod_to_look_up(user.username, user.extra, self.node_report_accounts)
        if claim is not None and self.pod_node is not None:
            try:
                pod_node = await self.pod_node(claim)
            except Exception as exc:  # refuse: the agent retries its write
                log.warning("cannot read pod %s/%s: %s", claim.namespace, claim.name, type(exc).__name__)
                return Verdict(False, "cannot read the pod the token is bound to; retry", result="denied", code=503)
        refusal = node_report_refusal(user.username, user.extra, name, self.node_report_accounts, pod_node)
        if refusal is not None:
            return Verdict(False, refusal, result="denied", code=403)
        return Verdict(True)

    async def validate(self, req: ValidationRequest) -> Verdict:
        if req.kind in (api.ARMOR_NODE.kind, api.ARMOR_BEHAVIOR.kind) and req.group == api.GROUP:
            return await self._node_report(req)
        if req.kind not in POLICY_KINDS or req.group != api.GROUP or req.operation not in ("CREATE", "UPDATE"):
            return Verdict(True, result="ignored")
        if req.obj is None:
            return Verdict(False, "request.object is missing", result="denied")
        if req.operation == "UPDATE" and isinstance(req.old_obj, dict):
            old_spec, new_spec = req.old_obj.get("spec"), req.obj.get("spec")
            old_target = old_spec.get("target") if isinstance(old_spec, dict) else None
            new_target = new_spec.get("target") if isinstance(new_spec, dict) else None
            if old_target != new_target:
                return Verdict(False, "spec.target is immutable: create a new policy instead", result="denied")
        try:
            compiled = compile_policy(req.obj, self.install_namespace)
        except CompileError as exc:
            return Verdict(False, exc.message, result="denied")
        warnings = tuple(f"varmor: {w}" for w in compiled.policy.warnings)
        verdict = await self._compile(compiled.profile)
        if verdict is None:
            return Verdict(False, BUSY, warnings, "busy", code=429)
        if verdict.ok:
            return Verdict(True, warnings=warnings + ((f"varmor: {verdict.message}",) if verdict.message else ()))
        ep = compiled.policy.enhance_protect
        field = "spec.policy.enhanceProtect.appArmorRawRules" if ep is not None and ep.raw_rules else "spec.policy"
        if verdict.exceeded:
            message = f"{field}: {verdict.message} (CompileBudgetExceeded); simplify the rules"
            return Verdict(False, message, warnings, "over_budget")
        return Verdict(
            False, f"{field}: {verdict.message or 'apparmor_parser rejected the profile'}", warnings, "denied"
        )

    async def _compile(self, built: BuiltProfile) -> CompileResult | None:
        """The profile's verdict (None: the queue is full, busy). Deadline and budget failures
        of the content itself are cached like any verdict; waiting out (most of) the deadline
        in the queue is not the content's fault: answered busy, and nothing is cached."""
        key = built.sha256
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self._queued >= self._capacity:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        self._queued += 1
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                return None
            try:
                self.compiles += 1
                remaining = max(0.1, deadline - loop.time())
                verdict = await compile_profile(built.name, built.text, self.budget.within(remaining))
            finally:
                self._slots.release()
            if verdict.exceeded and remaining < self.deadline / 2:
                return None  # it waited most of its deadline: busy, and not the content's verdict
        except ParserNotFoundError:
            return CompileResult(True, NO_PARSER)  # documented: the leader's compile is the backstop
        finally:
            self._queued -= 1
        if verdict.exceeded == DEADLINE:
            verdict = CompileResult(False, f"compiling the profile did not finish within {self.deadline:g} s", DEADLINE)
        self._cache[key] = verdict
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return verdict
