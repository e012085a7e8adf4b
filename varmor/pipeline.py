"""The policy pipeline: parse -> name -> build, the one way a policy becomes a profile.

The leader (ArmorProfiles), the validating webhook (admission) and the CLI (`varmor
profile render`) all call `compile_policy`, so what a user is told at admission is what
the leader writes and what the CLI prints. Pure: the compile check by apparmor_parser is
the caller's (it is I/O with a cost budget); this only builds text.

Results are cached by (uid, generation, install namespace, catalog): a policy object's
spec cannot change without its generation changing, and the leader recomputes a
policy's status on every node report, so the cache spares it a rebuild per report.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from varmor import api
from varmor.policy import Policy, PolicyError, parse_policy
from varmor.profile.builder import BuiltProfile, build_profile
from varmor.profile.deny_default import BehaviorInputs, ModelMissing
from varmor.profile.trust import check_profile_text
from varmor.rules import Catalog, load_catalog

CACHE_SIZE = 4096
# Every executable target becomes a child profile that repeats the container-wide rules and
# a transition to each other target: text grows with the square of the targets. Bounded
# before anything is built, so no policy (or unauthenticated /validate call) can make a
# replica build hundreds of MB.
MAX_TARGETS = 64
# What an agent accepts (varmor.profile.trust.MAX_TEXT): refused here, not on every node.
MAX_PROFILE_BYTES = 1024 * 1024


class CompileError(Exception):
    """The policy cannot become a profile. `reason` is the status condition's reason:
    `Invalid` (the user's input; the message names the field), `ModelMissing` (DefenseInDepth
    with no behaviour model yet) or `BuildFailed` (a bug)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CompiledPolicy:
    policy: Policy
    profile: BuiltProfile

    @property
    def profile_name(self) -> str:
        return self.profile.name

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.profile.warnings


CacheKey = tuple[str, int, str, int, BehaviorInputs]
_cache: OrderedDict[CacheKey, CompiledPolicy] = OrderedDict()
# Admission and `varmor profile render` know no model and no modelling window: they check
# the modelling profile, and a DefenseInDepth profile with an empty model (which still
# compiles every raw and custom rule). The leader passes the real inputs.
ADMISSION_VIEW = BehaviorInputs(modeling=True, model_rules=())


def _cache_key(
    obj: Mapping[str, Any], install_namespace: str, catalog: Catalog, inputs: BehaviorInputs
) -> CacheKey | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid, generation = meta.get("uid"), meta.get("generation")
    if not isinstance(uid, str) or not uid or not isinstance(generation, int) or generation <= 0:
        return None  # not stored yet (admission of a CREATE): nothing identifies the content
    return uid, generation, install_namespace, id(catalog), inputs


def compile_policy(
    obj: Mapping[str, Any],
    install_namespace: str,
    catalog: Catalog | None = None,
    inputs: BehaviorInputs = ADMISSION_VIEW,
) -> CompiledPolicy:
    """A VarmorPolicy or VarmorClusterPolicy (the API's JSON) as its profile, or
    CompileError. `inputs`: the behaviour modes' window and model (the leader's)."""
    catalog = catalog or load_catalog()
    key = _cache_key(obj, install_namespace, catalog, inputs)
    if key is not None and (hit := _cache.get(key)) is not None:
        _cache.move_to_end(key)
        return hit
    try:
        policy = parse_policy(obj, install_namespace=install_namespace, catalog=catalog)
        name = policy.profile_name(install_namespace)
    except PolicyError as exc:
        raise CompileError("Invalid", str(exc)) from None
    except api.ProfileNameError as exc:
        raise CompileError("Invalid", f"metadata.name: {exc}") from None
    ep = policy.enhance_protect
    targets = {t for group in (ep.attack_protection_rules + ep.raw_rules) for t in group.targets} if ep else set()
    if len(targets) > MAX_TARGETS:
        raise CompileError(
            "Invalid",
            f"spec.policy.enhanceProtect: {len(targets)} distinct executable targets; at most {MAX_TARGETS} "
            "(each becomes a child profile repeating every rule)",
        )
    try:
        profile = build_profile(policy, name, catalog, inputs)
    except ModelMissing as exc:
        raise CompileError("ModelMissing", str(exc)) from None
    except Exception as exc:  # a builder bug must not crash-loop the leader or 500 an admission
        raise CompileError("BuildFailed", f"building the profile failed: {exc}") from exc
    if len(profile.text.encode()) > MAX_PROFILE_BYTES:
        raise CompileError(
            "Invalid", f"the profile would be {len(profile.text.encode())} bytes; at most {MAX_PROFILE_BYTES}"
        )
    # The agents' own check, here too: what the leader writes, every agent loads (a profile
    # they refused would never be enforced, and a refused update would stay unapplied).
    refused = check_profile_text(name, profile.text, profile.mode)
    if refused is not None:
        raise CompileError("Invalid", f"the agents would refuse this profile: {refused}")
    compiled = CompiledPolicy(policy, profile)
    if key is not None:
        _cache[key] = compiled
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled
