"""The agent's behaviour collector (no API): which records become rules, which are
excluded, which pods they are credited to, and what its share says."""

from __future__ import annotations

import pytest

from varmor.nodeexec import collector as collector_module
from varmor.nodeexec.attribution import Attribution, PodRef
from varmor.nodeexec.audit import parse_line
from varmor.nodeexec.collector import MAX_PODS, OTHER_NAMESPACE, BehaviorCollector
from varmor.nodeexec.state import Desired, PolicyRef
from varmor.reconcile.behaviors import top_pods

PROFILE = "varmor-team-web"
OWNER = Desired(PROFILE, "team", "", "", "complain", PolicyRef("VarmorPolicy", "web", "team", "u"), "uid", True)


def record(serial: int, body: str, comm: str = "app", pid: int = 4242) -> str:
    return (
        f'type=AVC msg=audit(1700000000.001:{serial}): apparmor="ALLOWED" {body} profile="{PROFILE}" '
        f'pid={pid} comm="{comm}"'
    )


READ = 'operation="open" name="/proc/{pid}/status" requested_mask="r" denied_mask="r" fsuid=0 ouid=0'


def collect(collector: BehaviorCollector, line: str, attribution: Attribution | None = None) -> None:
    parsed = parse_line(line)
    assert parsed is not None
    owner = collector.modeling(parsed)
    assert owner is not None
    collector.collect(parsed, owner, attribution)


def share_spec(collector: BehaviorCollector) -> dict[str, object]:
    (share,) = collector._shares.values()
    spec: dict[str, object] = collector._body(share, None)["spec"]
    return spec


def pod(namespace: str, name: str) -> Attribution:
    return Attribution(PodRef(namespace, name, "uid-" + name, "app", "registry/app:1"))


def test_records_become_generalised_rules_and_the_runtime_is_excluded() -> None:
    collector = BehaviorCollector(None, "n1", lambda name: OWNER if name == PROFILE else None)
    for i, pid in enumerate((101, 202, 303)):
        collect(collector, record(10 + i, READ.format(pid=pid), pid=pid), pod("team", "web-1"))
    collect(collector, record(20, READ.format(pid=1), comm="runc:[2:INIT]", pid=1))
    collect(collector, record(21, 'operation="open" name="/etc/a*b" requested_mask="r" fsuid=0 ouid=0'))
    (share,) = collector._shares.values()
    assert [str(r) for r in share.behavior.rules] == ["FileRule(path='/proc/@{pid}/status', perms='r', owner=True)"]
    spec = share_spec(collector)
    assert (spec["records"], spec["excludedRecords"], spec["unattributedRecords"]) == (5, 2, 2)
    assert spec["pods"] == [
        {"namespace": "team", "name": "web-1", "container": "app", "image": "registry/app:1", "records": 3}
    ]


def test_pods_of_another_namespace_are_not_named_and_the_list_is_bounded() -> None:
    collector = BehaviorCollector(None, "n1", lambda name: OWNER if name == PROFILE else None)
    collect(collector, record(1, READ.format(pid=7)), pod("other-tenant", "secret-app"))
    for i in range(MAX_PODS + 5):
        collect(collector, record(100 + i, READ.format(pid=7)), pod("team", f"web-{i:03d}"))
    spec = share_spec(collector)
    pods = spec["pods"]
    assert isinstance(pods, list)
    assert len(pods) == MAX_PODS + 1  # the named ones and one "(more pods)"
    assert {"namespace": OTHER_NAMESPACE, "name": "", "container": "", "image": "", "records": 1} in pods
    assert not any(p["namespace"] == "other-tenant" for p in pods)
    assert {"namespace": "", "name": "(more pods)", "container": "", "image": "", "records": 6} in pods


def test_the_model_lists_the_busiest_pods_across_nodes() -> None:
    shares = [
        {"spec": {"pods": [{"namespace": "team", "name": "a", "records": 2}, {"namespace": "team", "name": "b"}]}},
        {"spec": {"pods": [{"namespace": "team", "name": "a", "records": 5}]}},
    ]
    assert top_pods(shares) == [
        {"namespace": "team", "name": "a", "records": 7},
        {"namespace": "team", "name": "b", "records": 0},
    ]


def test_records_read_after_the_window_ended_still_go_to_the_model() -> None:
    """The agent takes the ended window's enforce version as its own before the kernel
    loads it, and the audit tail lags: ALLOWED records read then were written under the
    modelling version (enforce mode logs none), so they are the model's, not violations.
    Another profile's complain mode (allowViolations) is not modelling."""
    current = {PROFILE: OWNER}
    collector = BehaviorCollector(None, "n1", current.get)
    collect(collector, record(10, READ.format(pid=101)))
    ended = Desired(PROFILE, "team", "", "", "enforce", OWNER.policy, "uid", False)
    current[PROFILE] = ended
    late = parse_line(record(11, 'operation="open" name="/etc/late" requested_mask="r" fsuid=0 ouid=0'))
    assert late is not None
    assert collector.modeling(late) is OWNER
    violating = Desired(PROFILE, "team", "", "", "complain", OWNER.policy, "uid", False)
    current[PROFILE] = violating
    assert collector.modeling(late) is None
    current[PROFILE] = Desired(PROFILE, "team", "", "", "enforce", OWNER.policy, "another-uid", False)
    assert collector.modeling(late) is None  # a new ArmorProfile of that name: not this share's


def test_another_namespaces_pod_does_not_shape_a_namespaced_policys_model() -> None:
    """A pod of another tenant may name this profile: its records are counted, not modelled;
    nor are records whose pod is unknown (they cannot be shown to be the policy's own)."""
    collector = BehaviorCollector(None, "n1", lambda name: OWNER if name == PROFILE else None)
    shadow = 'operation="open" name="/etc/shadow" requested_mask="r" denied_mask="r" fsuid=0 ouid=0'
    collect(collector, record(1, shadow), pod("other-tenant", "intruder"))
    collect(collector, record(2, shadow), Attribution(None, "pid 4242 exited"))
    collect(collector, record(3, READ.format(pid=9)), pod("team", "web-1"))
    (share,) = collector._shares.values()
    assert [str(r) for r in share.behavior.rules] == ["FileRule(path='/proc/@{pid}/status', perms='r', owner=True)"]
    assert share.behavior.excluded == 2


def test_a_share_stays_within_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct long paths stop being added once the share would pass its budget; known
    rules still count, and the rest is excluded, never dropped silently."""
    monkeypatch.setattr(collector_module, "MAX_SHARE_BYTES", 4096)
    collector = BehaviorCollector(None, "n1", lambda name: OWNER if name == PROFILE else None)
    for i in range(40):
        body = f'operation="open" name="/srv/{"d" * 200}/{i:04d}.dat" requested_mask="r" fsuid=0 ouid=0'
        collect(collector, record(100 + i, body))
    (share,) = collector._shares.values()
    assert share.size <= 4096
    assert len(share.behavior) < 40
    assert share.behavior.excluded == 40 - len(share.behavior)
