"""`varmor cleanup` (the chart's pre-delete hook) does not stall on nodes whose agent is gone."""

from __future__ import annotations

import time
from typing import Any

import pytest

from varmor.kube import ApiException
from varmor.webhook.cli import cleanup

pytestmark = pytest.mark.cluster


async def test_uninstall_does_not_wait_for_nodes_whose_agent_is_gone(api_client: Any, nodes: Any) -> None:
    live = await nodes.add("live", heartbeat=True)
    gone = await nodes.add("gone", heartbeat=True)
    loaded = {"profiles": {"varmor-x-y": {"namespace": "x", "sha256": "0" * 64, "mode": "enforce"}}}
    # the agent on `gone` stopped an hour ago with a profile loaded; `live` has unloaded
    await nodes.write(gone, {**await nodes.status(gone), **loaded, "heartbeatTime": "2026-01-01T00:00:00Z"})
    started = time.monotonic()
    await cleanup(api_client, "no-such-config", unload_timeout=30)
    assert time.monotonic() - started < 10, "waited for an agent that is not there"
    for name in (live, gone):
        with pytest.raises(ApiException) as missing:
            await nodes.status(name)
        assert missing.value.status == 404
