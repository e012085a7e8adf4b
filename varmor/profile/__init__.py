"""Pure AppArmor profile builder: policy in, deterministic profile text out (no I/O)."""

from varmor.profile.builder import BuiltProfile, Disposition, build_profile, disposition
from varmor.profile.node_local import (
    NO_DEVICE_PLACEHOLDER,
    NODE_LOCAL_INCLUDE,
    DiskDeviceError,
    node_local_include,
)
from varmor.profile.raw import CheckedRawRules, RawRuleError, check_raw_rules, validate_raw_rules

__all__ = [
    "NODE_LOCAL_INCLUDE",
    "NO_DEVICE_PLACEHOLDER",
    "BuiltProfile",
    "CheckedRawRules",
    "DiskDeviceError",
    "Disposition",
    "RawRuleError",
    "build_profile",
    "check_raw_rules",
    "disposition",
    "node_local_include",
    "validate_raw_rules",
]
