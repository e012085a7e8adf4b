"""Which pod an audit record came from: cgroup paths of both drivers, the node's pod index,
a pid that is gone, and what the violation log and Event say."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from varmor.nodeexec.attribution import Attribution, Attributor, PodIndex, PodRef, cgroup_ids
from varmor.nodeexec.audit import parse_line
from varmor.nodeexec.state import Desired, PolicyRef
from varmor.nodeexec.violations import Violation, violation_event

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CID = "ab" * 32
RECORD = (
    '[    3.141592] audit: type=1400 audit(1764336000.123:42): apparmor="DENIED" operation="open" class="file" '
    'profile="varmor-team-a-web" name="/proc/kallsyms" pid=4242 comm="cat" requested_mask="r" denied_mask="r" '
    "fsuid=0 ouid=0"
)


@pytest.mark.parametrize(
    "text",
    [
        f"0::/kubepods/besteffort/pod{UID}/{CID}\n",  # cgroupfs driver
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{CID}.scope\n",  # systemd driver
        f"12:pids:/kubepods/burstable/pod{UID}/{CID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n",  # v1
    ],
)
def test_the_pod_uid_and_container_id_come_from_either_cgroup_driver(text: str) -> None:
    assert cgroup_ids(text) == (UID, CID)


def test_cgroups_a_workload_nests_below_its_own_cannot_pose_as_another_pod() -> None:
    other_uid, other_cid = "11111111-2222-3333-4444-555555555555", "cd" * 32
    nested = f"0::/kubepods/besteffort/pod{UID}/{CID}/pod{other_uid}/{other_cid}\n"
    assert cgroup_ids(nested) == (UID, CID)


async def test_a_container_id_of_another_pod_names_only_the_pod_of_the_path() -> None:
    index = PodIndex()
    await index.on_pod("ADDED", pod())
    other_uid = "11111111-2222-3333-4444-555555555555"
    await index.on_pod("ADDED", {"metadata": {"name": "other", "namespace": "team-b", "uid": other_uid}})
    assert index.find(other_uid, CID) == PodRef("team-b", "other", other_uid)


async def test_a_pod_replaced_under_the_same_name_leaves_nothing_of_the_old_one() -> None:
    index = PodIndex()
    await index.on_pod("ADDED", pod())
    newer = pod()
    newer["metadata"]["uid"] = "99999999-2222-3333-4444-555555555555"
    newer["status"]["containerStatuses"][0]["containerID"] = "containerd://" + "ef" * 32
    await index.on_pod("MODIFIED", newer)  # what a relist delivers after a watch gap
    assert UID not in index.pods
    assert CID not in index.containers


def test_a_process_outside_pods_or_a_lookalike_name_yields_nothing() -> None:
    assert cgroup_ids("0::/system.slice/containerd.service\n") == (None, None)
    assert cgroup_ids("0::/user.slice/mypod-not-a-uid/abc\n") == (None, None)
    assert cgroup_ids(f"0::/kubepods/besteffort/pod{UID}\n") == (UID, None)  # the pause-less pod cgroup


def pod(*, with_status: bool = True, deleted: bool = False) -> dict[str, Any]:
    statuses = [{"name": "app", "image": "busybox:1", "containerID": f"containerd://{CID}"}] if with_status else []
    return {"metadata": {"name": "web-1", "namespace": "team-a", "uid": UID}, "status": {"containerStatuses": statuses}}


async def test_the_index_names_the_container_once_reported_and_the_pod_before() -> None:
    index = PodIndex()
    await index.on_pod("ADDED", pod(with_status=False))
    assert index.find(UID, CID) == PodRef("team-a", "web-1", UID)
    await index.on_pod("MODIFIED", pod())
    assert index.find(UID, CID) == PodRef("team-a", "web-1", UID, "app", "busybox:1")
    await index.on_pod("DELETED", pod())
    assert index.find(UID, CID) is None
    assert index.containers == {}


def proc_entry(proc: Path, pid: str, cgroup: str, started: int = 100) -> None:
    """A /proc/<pid> with its cgroup and a stat whose start time is `started` ticks after boot."""
    (proc / pid).mkdir()
    (proc / pid / "cgroup").write_text(cgroup)
    rest = " ".join(["0"] * 18 + [str(started)] + ["0"] * 30)
    (proc / pid / "stat").write_text(f"{pid} (sh (odd) name) S {rest}\n")


async def test_a_pid_is_resolved_through_proc_or_reported_unattributed(tmp_path: Path) -> None:
    index = PodIndex()
    await index.on_pod("ADDED", pod())
    attributor = Attributor(tmp_path, index)
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1764336000\n")
    proc_entry(tmp_path, "4242", f"0::/kubepods/besteffort/pod{UID}/{CID}\n")
    proc_entry(tmp_path, "7", "0::/system.slice/sshd.service\n")
    assert attributor.attribute("4242").pod == PodRef("team-a", "web-1", UID, "app", "busybox:1")
    gone = attributor.attribute("999")
    assert gone.pod is None
    assert "exited before the agent read the record" in gone.reason
    assert "no pod's cgroup" in attributor.attribute("7").reason
    for hostile in ("../../etc", "-1", "", None, "1" * 20):
        assert attributor.attribute(hostile).pod is None  # never a path outside /proc/<pid>
    # A short-lived process is gone; its parent, in the same pod, is not.
    assert attributor.attribute("999", "4242").pod == PodRef("team-a", "web-1", UID, "app", "busybox:1")
    assert attributor.attribute("999", "../4242").pod is None
    # A process that started after the record is a newer one under a reused pid.
    ticks = attributor.ticks
    assert attributor.attribute("4242", when=1764336000 + 100 / ticks + 0.5).pod is not None
    assert attributor.attribute("4242", when=1764336000 + 100 / ticks - 5).pod is None


def test_the_syscall_record_of_an_event_gives_its_parent() -> None:
    from varmor.nodeexec.audit import parse_syscall

    line = (
        "type=SYSCALL msg=audit(1764336000.123:42): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c "
        'items=0 ppid=4242 pid=999 auid=4294967295 uid=0 tty=(none) ses=4294967295 comm="cat" '
        'exe="/bin/busybox" subj=varmor-team-a-web key=(null)\x1dARCH=x86_64 SYSCALL=openat'
    )
    found = parse_syscall(line)
    assert found is not None
    assert (found.serial, found.pid, found.ppid) == (42, "999", "4242")
    assert parse_syscall(line.replace("type=SYSCALL", "type=USER_AVC")) is None  # userspace cannot pose as one
    assert parse_syscall(line.replace("ppid=4242", "ppid=4242 ppid=1")) is None  # a repeated key is forged


def violation(attribution: Attribution, policy_ns: str = "team-a", kind: str = "VarmorPolicy") -> Violation:
    record = parse_line(RECORD)
    assert record is not None
    owner = Desired("varmor-team-a-web", policy_ns, "", "", "enforce", PolicyRef(kind, "web", policy_ns, "p-1"))
    return Violation(record, owner, attribution)


def test_the_log_and_the_event_name_the_pod_container_and_image() -> None:
    found = violation(Attribution(PodRef("team-a", "web-1", UID, "app", "busybox:1")))
    entry = found.as_json("node-1")
    assert entry["pod"] == {
        "namespace": "team-a",
        "name": "web-1",
        "uid": UID,
        "container": "app",
        "image": "busybox:1",
    }
    event = violation_event(found, "node-1", 0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert event is not None
    assert "in pod team-a/web-1 (container app, image busybox:1)" in event["message"]


def test_an_unattributed_record_is_kept_with_the_reason() -> None:
    entry = violation(Attribution(None, "pid 4242 exited before the agent read the record")).as_json("node-1")
    assert entry["pod"] is None
    assert entry["unattributed"] == "pid 4242 exited before the agent read the record"
    assert entry["operation"] == "open"


def test_another_tenants_pod_is_not_named_in_the_policys_event() -> None:
    other = Attribution(PodRef("team-b", "intruder", UID, "app", "busybox:1"))
    event = violation_event(violation(other), "node-1", 0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert event is not None
    assert "intruder" not in event["message"]
    assert "in a pod of another namespace" in event["message"]
    cluster = violation(other, "varmor", "VarmorClusterPolicy")
    event = violation_event(cluster, "node-1", 0, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert event is not None
    assert "pod team-b/intruder" in event["message"]
