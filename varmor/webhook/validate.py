"""The validating decision for policies: what the CRD's CEL rules cannot check.

The structural schema and CEL already reject most mistakes even when varmor is down;
here the full parser runs (rule IDs under the right list, absolute targets, profile-name
length, other enforcers), and raw rules are compiled by apparmor_parser, because only
the compiler knows whether a rule is valid and enforceable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from varmor import api
from varmor.admission.review import ValidationRequest
from varmor.parser import ParserNotFoundError, compile_check
from varmor.pipeline import CompileError, compile_policy
from varmor.profile.builder import BuiltProfile

log = logging.getLogger(__name__)

POLICY_KINDS = {api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    result: str = "allowed"


class PolicyValidator:
    """Validates policies; compiles raw rules off the loop, with a small result cache."""

    def __init__(self, install_namespace: str, *, compile_timeout: float = 3.0, cache_size: int = 256) -> None:
        self.install_namespace = install_namespace
        self.compile_timeout = compile_timeout
        self._cache: OrderedDict[str, tuple[bool, str]] = OrderedDict()
        self._cache_size = cache_size
        self._compiles = asyncio.Semaphore(2)

    async def validate(self, req: ValidationRequest) -> Verdict:
        if req.kind not in POLICY_KINDS or req.group != api.GROUP or req.operation not in ("CREATE", "UPDATE"):
            return Verdict(True, result="ignored")
        if req.obj is None:
            return Verdict(False, "request.object is missing", result="denied")
        if req.operation == "UPDATE" and req.old_obj is not None:
            old_target = (req.old_obj.get("spec") or {}).get("target")
            new_target = (req.obj.get("spec") or {}).get("target")
            if old_target != new_target:
                return Verdict(False, "spec.target is immutable: create a new policy instead", result="denied")
        try:
            compiled = compile_policy(req.obj, self.install_namespace)
        except CompileError as exc:
            return Verdict(False, exc.message, result="denied")
        warnings = tuple(f"varmor: {w}" for w in compiled.policy.warnings)
        ep = compiled.policy.enhance_protect
        if ep is None or not ep.raw_rules:
            return Verdict(True, warnings=warnings)
        ok, message = await self._compile(compiled.profile)
        if not ok:
            return Verdict(False, f"spec.policy.enhanceProtect.appArmorRawRules: {message}", warnings, "denied")
        return Verdict(True, warnings=warnings + ((f"varmor: {message}",) if message else ()))

    async def _compile(self, built: BuiltProfile) -> tuple[bool, str]:
        """(ok, message) for the policy's profile; unknown-parser situations allow with a note."""
        key = built.sha256
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            async with self._compiles:
                results = await asyncio.to_thread(compile_check, {built.name: built.text}, timeout=self.compile_timeout)
        except ParserNotFoundError:
            return True, "raw rules not compile-checked here (apparmor_parser missing); the leader checks them"
        except Exception as exc:  # timeouts, odd parser failures: do not block the user on our problem
            log.warning("compile check failed to run: %s", type(exc).__name__)
            return True, "raw rules could not be compile-checked now; the leader checks them"
        res = results[built.name]
        verdict = (res.ok, "" if res.ok else (res.message or "apparmor_parser rejected the profile"))
        self._cache[key] = verdict
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return verdict
