"""The agent's behaviour collector (no API): which records become rules, which are
excluded, which pods they are credited to, and what its share says."""

from __future__ import annotations

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
