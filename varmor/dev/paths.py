"""Where the project keeps what it builds and downloads."""

from __future__ import annotations

import os
from pathlib import Path

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.34.4")
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("VARMOR_CACHE", Path.home() / ".cache" / "varmor"))


def control_plane_bin_dir() -> Path:
    return cache_dir() / "bin" / f"k8s-{K8S_VERSION}"


def state_dir() -> Path:
    """Where `varmor dev` keeps the running cluster and demo (VARMOR_STATE overrides, so
    tests can run their own without touching a developer's)."""
    return Path(os.environ.get("VARMOR_STATE", cache_dir()))


def dev_cluster_dir() -> Path:
    return state_dir() / "dev-cluster"


def demo_dir() -> Path:
    return state_dir() / "dev"
