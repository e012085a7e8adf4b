"""The README's main command: `varmor dev up` shows a policy protecting a workload end
to end on a fresh state directory, and `varmor dev down` removes everything."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def varmor(*args: str, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VARMOR_STATE": str(state)}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "varmor.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours would still answer; the children are detached, so check its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_dev_up_shows_protection_and_dev_down_cleans_up(tmp_path: Path) -> None:
    up = varmor("dev", "up", "--timeout=90", state=tmp_path, timeout=240)
    output = up.stdout + up.stderr
    try:
        assert up.returncode == 0, output
        assert "policy demo/web: READY=True phase=Protecting" in output
        assert "abi <abi/3.0>," in output  # the generated profile is printed
        assert "profile varmor-demo-web flags=" in output
        assert "localhostProfile: varmor-demo-web" in output  # the admitted pod spec
        assert "varmor dev down" in output
        pids = list(json.loads((tmp_path / "dev" / "state.json").read_text())["pids"].values())
        pids += list(json.loads((tmp_path / "dev-cluster" / "state.json").read_text())["pids"].values())
        assert all(alive(pid) for pid in pids)
        watch_then_enforce(tmp_path)
    finally:
        down = varmor("dev", "down", state=tmp_path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (tmp_path / "dev-cluster").exists()
    assert not any(alive(pid) for pid in pids)


def watch_then_enforce(state: Path) -> None:
    """The README's "Watch, then enforce" on the dev cluster, up to the model (ending the
    window takes its real minute; the switch to DefenseInDepth is proven on the leader's
    clock in test_behavior_modeling.py)."""
    kubeconfig = str(state / "dev-cluster" / "admin.kubeconfig")
    asyncio.run(apply_examples(kubeconfig, ["modeling-deployment.yaml", "modeling-policy.yaml"]))
    # The workload runs under the modelling profile once it is loaded: records come after.
    asyncio.run(wait_modeling(kubeconfig))
    asyncio.run(wait_profiled_pod(kubeconfig))  # the rolled Deployment's pod, with the profile
    scheduled = varmor("dev", "schedule", "-n", "demo", state=state, timeout=60)
    assert "bound to varmor-dev-node" in scheduled.stdout + scheduled.stderr, scheduled.stderr
    records = (EXAMPLES / "modeling-records.log").read_text().replace("@PROFILE@", "varmor-demo-api")
    with (state / "dev" / "audit.log").open("a") as log:
        log.write(records)
    show = ["model", "show", "api", "-n", "demo", f"--kubeconfig={kubeconfig}"]
    deadline = time.monotonic() + 60
    shown = varmor(*show, state=state, timeout=60)
    while "/usr/local/bin/python3.12 ix," not in shown.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = varmor(*show, state=state, timeout=60)
    assert "/proc/@{pid}/status r," in shown.stdout, shown.stdout + shown.stderr
    assert "/tmp/tmp* w," in shown.stdout
    model = subprocess.run(
        [sys.executable, "-m", "varmor.cli", "model", "export", "api", "-n", "demo", f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "profileType: BehaviorModel" in model.stdout


async def apply_examples(kubeconfig: str, files: list[str]) -> None:
    from varmor.kube.client import new_api_client
    from varmor.kube.kube import Kube

    api_client = await new_api_client(kubeconfig)
    try:
        kube = Kube(api_client)
        for name in files:
            doc = yaml.safe_load((EXAMPLES / name).read_text())
            group = "apis/apps/v1" if doc["kind"] == "Deployment" else "apis/crd.varmor.org/v1beta1"
            plural = "deployments" if doc["kind"] == "Deployment" else "varmorpolicies"
            await kube.request("POST", f"/{group}/namespaces/demo/{plural}", body=doc)
    finally:
        await api_client.close()


async def wait_modeling(kubeconfig: str) -> None:
    from tests.helpers import wait_for
    from varmor.kube.client import new_api_client
    from varmor.kube.kube import Kube

    api_client = await new_api_client(kubeconfig)
    try:
        kube = Kube(api_client)

        async def modeling() -> bool:
            policy = await kube.request("GET", "/apis/crd.varmor.org/v1beta1/namespaces/demo/varmorpolicies/api")
            status = policy.get("status") or {}
            return bool(status.get("ready")) and status.get("phase") == "Modeling"

        await wait_for(modeling, timeout=60)
    finally:
        await api_client.close()


async def wait_profiled_pod(kubeconfig: str) -> None:
    from tests.helpers import wait_for
    from varmor.kube.client import new_api_client
    from varmor.kube.kube import Kube
    from varmor.reconcile.modelmerge import uses_profile

    api_client = await new_api_client(kubeconfig)
    try:
        kube = Kube(api_client)

        async def profiled() -> bool:
            pods = await kube.request("GET", "/api/v1/namespaces/demo/pods", query={"labelSelector": "app=api"})
            return any(uses_profile(pod, "varmor-demo-api") for pod in pods["items"])

        await wait_for(profiled, timeout=60)
    finally:
        await api_client.close()
