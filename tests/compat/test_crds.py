"""varmor's CRDs install on each compat release, and its API server enforces their schema
and CEL rules: the default suite's tests/cluster/test_crds.py, collected again here with
this layer's control planes."""

from __future__ import annotations

import pytest

from tests.cluster.test_crds import *  # noqa: F403 - the same tests, this layer's fixtures

pytestmark = pytest.mark.compat
