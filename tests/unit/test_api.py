from __future__ import annotations

import pytest

from varmor.api import ProfileNameError, profile_name


def test_namespaced_and_cluster_profile_names() -> None:
    assert profile_name("demo", "web", "varmor") == "varmor-demo-web"
    assert profile_name(None, "web", "varmor") == "varmor-cluster-varmor-web"


def test_too_long_name_is_refused_not_truncated() -> None:
    with pytest.raises(ProfileNameError, match="63"):
        profile_name("n" * 30, "p" * 30, "varmor")
