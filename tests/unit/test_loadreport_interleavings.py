"""The load report under every interleaving hypothesis finds: ArmorProfiles created,
updated, touched (status only) and deleted; two agents receiving them at their own pace,
syncing names in any order, failing some loads, and publishing reports at any moment; a
leader that receives the ArmorProfiles and the reports late and in its own order.

What must hold, with the product's own code on both sides (`Ledger`, `state.outcome`,
`state.node_status` for the agents; `LoadIndex` for the leader):

* safety: whenever the leader counts a node as having loaded an ArmorProfile's content,
  that node's kernel had loaded exactly that content before it published the report the
  leader judged;
* the index agrees with the node-by-node definition (`nodecounts.aggregate`);
* liveness: once everything is delivered and every load succeeds, every profile counts
  every node, and no report needs more than one exception per open profile.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from varmor.loadreport import Ledger
from varmor.nodeexec.state import Desired, Failed, Loaded, NodeState, node_status, outcome
from varmor.reconcile.loadindex import LoadIndex, NodeView
from varmor.reconcile.nodecounts import aggregate

NAMES = ("varmor-a-x", "varmor-a-y", "varmor-b-z")
NODES = ("n1", "n2")
Key = tuple[str, str]


def sha(content: int) -> str:
    return hashlib.sha256(str(content).encode()).hexdigest()


@dataclass
class Api:
    """The ArmorProfile event stream, in resourceVersion order."""

    rv: int = 100
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def write(self, key: Key, content: int | None, *, spec: bool = True) -> None:
        self.rv += 1
        old = self.objects.get(key)
        if content is None:
            if old is None:
                return
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self.rv)}}
            del self.objects[key]
            self.log.append(("DELETED", gone))
            return
        generation = (old["metadata"]["generation"] + (1 if spec else 0)) if old else 1
        profile = {"sha256": sha(content)} if spec or old is None else old["spec"]["profile"]
        obj = {
            "metadata": {
                "namespace": key[0],
                "name": key[1],
                "uid": f"{key}-{generation if old is None else old['metadata']['uid']}",
                "resourceVersion": str(self.rv),
                "generation": generation,
            },
            "spec": {"profile": profile},
        }
        if old is not None:
            obj["metadata"]["uid"] = old["metadata"]["uid"]
        self.objects[key] = obj
        self.log.append(("ADDED" if old is None else "MODIFIED", obj))


@dataclass
class AgentSim:
    name: str
    delivered: int = 0
    cache: dict[Key, dict[str, Any]] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    state: NodeState = field(default_factory=NodeState)
    desired: dict[str, Desired] = field(default_factory=dict)
    queue: set[str] = field(default_factory=set)
    inflight: dict[str, tuple[int | None, Desired | None]] = field(default_factory=dict)
    loaded_ever: set[tuple[str, str, str]] = field(default_factory=set)  # (name, namespace, sha)
    published: list[tuple[dict[str, Any], frozenset[tuple[str, str, str]]]] = field(default_factory=list)

    def deliver(self, api: Api) -> None:
        event, obj = api.log[self.delivered]
        self.delivered += 1
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event == "DELETED":
            self.cache.pop(key, None)
        else:
            self.cache[key] = obj
        self.ledger.received(key, obj, deleted=event == "DELETED")
        self.queue.add(key[1])

    def start(self, name: str) -> None:
        """A worker picks `name` up (one sync per name at a time, as the WorkQueue does)."""
        self.queue.discard(name)
        objs = [o for k, o in sorted(self.cache.items()) if k[1] == name]
        want = None
        if objs:
            meta, profile = objs[0]["metadata"], objs[0]["spec"]["profile"]
            want = Desired(name, meta["namespace"], "", profile["sha256"], "enforce")
        self.inflight[name] = (self.ledger.begin(name), want)

    def finish(self, name: str, ok: bool) -> None:
        token, want = self.inflight.pop(name)
        if want is None:
            self.state.loaded.pop(name, None)
            self.state.failures.pop(name, None)
            self.desired.pop(name, None)
        else:
            self.desired[name] = want
            if ok:
                self.state.loaded[name] = Loaded(want.namespace, want.sha256, want.mode)
                self.state.failures.pop(name, None)
                self.loaded_ever.add((name, want.namespace, want.sha256))
            else:
                self.state.failures[name] = Failed(want.namespace, want.sha256, "apparmor_parser: boom")
        self.ledger.settle(name, token)

    def publish(self) -> dict[str, Any]:
        report = self.ledger.report(functools.partial(outcome, self.state, self.desired))
        status = node_status(
            supported=True, reason="", parser_version="4", agent_version="1", ready=True, report=report
        )
        self.published.append((status, frozenset(self.loaded_ever)))
        return status


@dataclass
class LeaderSim:
    delivered: int = 0
    index: LoadIndex = field(default_factory=LoadIndex)
    reports: dict[str, int] = field(default_factory=dict)  # node -> reports taken so far

    def deliver(self, api: Api) -> None:
        event, obj = api.log[self.delivered]
        self.delivered += 1
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.index.profile(key, obj, deleted=event == "DELETED")


def lost_message(_view: NodeView) -> str:
    return "lost"


def check(leader: LeaderSim, agents: dict[str, AgentSim]) -> None:
    index = leader.index
    for key, spec in index.specs.items():
        ps = index.status(key, frozenset(), lost_message)
        counted = []
        for node, view in index.nodes.items():
            # Which published report is counted, and what its node had loaded by then.
            history = next((h for s, h in agents[node].published if s is view.status), frozenset())
            proven = (key[1], key[0], spec.sha256) in history
            one = aggregate(
                key[1],
                key[0],
                spec.sha256,
                [{"metadata": {"name": node}, "status": view.status}],
                spec_rv=spec.spec_rv,
                leader_seen=index.seen,
            )
            if one.current:
                assert proven, f"{node} counted for {key} at {spec.sha256[:8]} without having loaded it"
                counted.append(node)
        assert ps.current == len(counted)
        views = [{"metadata": {"name": n}, "status": v.status} for n, v in index.nodes.items()]
        whole = aggregate(key[1], key[0], spec.sha256, views, spec_rv=spec.spec_rv, leader_seen=index.seen)
        assert (ps.desired, ps.current, ps.conditions) == (whole.desired, whole.current, whole.conditions)


ACTIONS = ("write", "touch", "delete", "agent_deliver", "agent_start", "agent_finish", "publish", "leader_deliver")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_node_is_counted_only_for_content_it_loaded(data: st.DataObject) -> None:
    api = Api()
    agents = {n: AgentSim(n) for n in NODES}
    leader = LeaderSim()
    for _ in range(data.draw(st.integers(20, 120), label="steps")):
        action = data.draw(st.sampled_from(ACTIONS))
        node = agents[data.draw(st.sampled_from(NODES))]
        if action in ("write", "touch", "delete"):
            name = data.draw(st.sampled_from(NAMES))
            key = ("ns-" + name.split("-")[1], name)
            if action == "write":
                api.write(key, data.draw(st.integers(0, 3)))
            elif action == "touch" and key in api.objects:
                api.write(key, 0, spec=False)
            elif action == "delete":
                api.write(key, None)
        elif action == "agent_deliver" and node.delivered < len(api.log):
            node.deliver(api)
        elif action == "agent_start" and (ready := sorted(node.queue - set(node.inflight))):
            node.start(data.draw(st.sampled_from(ready)))
        elif action == "agent_finish" and node.inflight:
            node.finish(data.draw(st.sampled_from(sorted(node.inflight))), data.draw(st.booleans()))
        elif action == "publish":
            leader.index.node(node.name, node.publish())
        elif action == "leader_deliver" and leader.delivered < len(api.log):
            leader.deliver(api)
        check(leader, agents)

    # Quiescence: everything delivered, every load succeeds, reports published.
    for node in agents.values():
        while node.delivered < len(api.log):
            node.deliver(api)
        for name in sorted(node.inflight):
            node.finish(name, True)
        for name in sorted(set(node.ledger.required) | node.queue):
            node.start(name)
            node.finish(name, True)
        leader.index.node(node.name, node.publish())
    while leader.delivered < len(api.log):
        leader.deliver(api)
    check(leader, agents)
    for key in api.objects:
        ps = leader.index.status(key, frozenset(), lost_message)
        assert (ps.desired, ps.current) == (len(NODES), len(NODES)), key
    for node in agents.values():
        assert not node.published[-1][0]["exceptions"]
