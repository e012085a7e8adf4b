"""Where the project keeps what it builds and downloads."""

from __future__ import annotations

import os
from pathlib import Path

# The release the suite and `varmor dev` run by default: the newest. The compat layer
# (tests/compat) adds the oldest supported one and the first with the AppArmor field.
DEFAULT_K8S_VERSION = "v1.37.2"
K8S_VERSION = os.environ.get("K8S_VERSION", DEFAULT_K8S_VERSION)
COMPAT_K8S_VERSIONS = ("v1.29.15", "v1.30.14")
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("VARMOR_CACHE", Path.home() / ".cache" / "varmor"))


def control_plane_bin_dir(version: str = K8S_VERSION) -> Path:
    return cache_dir() / "bin" / f"k8s-{version}"


def state_dir() -> Path:
    """Where `varmor dev` keeps the running cluster and demo (VARMOR_STATE overrides, so
    tests can run their own without touching a developer's)."""
    return Path(os.environ.get("VARMOR_STATE", cache_dir()))


def dev_cluster_dir() -> Path:
    return state_dir() / "dev-cluster"


def demo_dir() -> Path:
    return state_dir() / "dev"
