"""The load report: what an ArmorNode says about the profiles its node loaded, in a size
that does not grow with the number of profiles, and what the leader may conclude from it.

Why not a map of every loaded profile: a map makes every change to one profile cost every
node a rewrite of everything it holds (nodes x profiles bytes per round of changes). The
report is instead a **watermark** plus **exceptions**:

* ArmorProfiles reach every agent through one watch, in resourceVersion order, and
  resourceVersions of one resource are comparable (positive integers, no leading zero;
  Kubernetes guarantees it from 1.35, and every etcd-backed server has always produced
  them);
* `watermark` W says: every ArmorProfile version this agent received with a
  resourceVersion <= W has been acted on, so its content is loaded here **unless** the
  profile is listed in `exceptions` (still `Loading`, or `Failed` with the parser's
  message);
* the leader counts a node as having loaded an ArmorProfile's current spec when the spec
  was first seen at a resourceVersion <= W, the profile is not an exception there, and the
  leader itself has seen every ArmorProfile version up to W (else the node may know of a
  newer version than the leader, and the verdict waits until the leader caught up).

A slow profile does not hold the others back: up to `MAX_LOADING` profiles still loading
are listed and W moves past them; only beyond that (a burst) W stops just below the first
one not listed. Failures are listed up to `MAX_FAILED`; a node with more failures than
that holds its watermark below the next one, which the leader shows as "still loading".
A change to one profile therefore costs each node one merge patch of the watermark and at
most one exception (`MAX_CHANGE_BYTES`), whatever the number of profiles.

Agent side: `Ledger` (what arrived, what was acted on) -> `Ledger.report`. Leader side:
`parse` -> `verdict`. Both pure; the property tests drive them through interleavings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from varmor import api

JSON = dict[str, Any]

MAX_LOADING: Final = api.MAX_LOADING_EXCEPTIONS
MAX_FAILED: Final = api.MAX_FAILED_EXCEPTIONS
MAX_EXCEPTIONS: Final = MAX_LOADING + MAX_FAILED
MAX_MESSAGE_BYTES: Final = 160  # an exception's message; the agent's log has the whole text
SHA_DIGITS: Final = 16  # of the content's sha256 an exception names: enough to tell versions apart
MAX_CHANGE_BYTES: Final = 512  # a status write for a change to one profile, request body included

ExceptionState = Literal["Loading", "Failed"]
Verdict = Literal["Loaded", "Loading", "Failed"]

_RV = re.compile(r"[1-9][0-9]*")


def resource_version(value: object) -> int | None:
    """A comparable resourceVersion (KEP-5504's format), or None for anything else."""
    if isinstance(value, str) and _RV.fullmatch(value):
        return int(value)
    return None


def truncate_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`message` cut to `limit` UTF-8 bytes, with an ellipsis when cut."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", errors="ignore") + "…"


@dataclass(frozen=True)
class LoadException:
    """A profile this node has not loaded at the content it last received."""

    state: ExceptionState
    namespace: str = ""
    sha256: str = ""
    message: str = ""

    def to_json(self) -> JSON:
        out: JSON = {"state": self.state, "namespace": self.namespace, "sha256": self.sha256[:SHA_DIGITS]}
        if self.message:
            out["message"] = truncate_message(self.message)
        return out


@dataclass(frozen=True)
class Report:
    """What one status write says; `progress` is the watermark counting only changes the
    agent must act on (a new spec, a new or deleted object): the agent writes when it or
    the exceptions change, not when the leader merely updated an ArmorProfile's status."""

    watermark: int | None
    progress: int | None
    exceptions: Mapping[str, LoadException]

    def to_json(self) -> JSON:
        if self.watermark is None:
            return {"exceptions": {}}
        return {
            "watermark": str(self.watermark),
            "exceptions": {name: e.to_json() for name, e in sorted(self.exceptions.items())},
        }


# What the agent knows of one profile name when it reports: None (nothing to report:
# loaded at the content it received, or the name is gone), or an exception.
Outcome = Callable[[str], LoadException | None]


@dataclass
class Ledger:
    """The agent's record of what arrived and what was acted on, per profile name.

    `received(key, name, rv, generation)` is called for every watch event in order;
    `begin(name)` when a sync of that name starts and `settle(name, token)` when it
    finished (with what `begin` returned), so a sync that started before a newer version
    arrived never settles the newer one."""

    seen: int | None = None  # the highest resourceVersion received (any change)
    acted: int | None = None  # the highest resourceVersion of a change to act on
    required: dict[str, int] = field(default_factory=dict)  # name -> rv of its last change to act on
    settled: dict[str, int] = field(default_factory=dict)  # name -> the `required` its last finished sync covered
    contents: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (namespace, sha256) received
    _versions: dict[tuple[str, str], tuple[object, bool]] = field(default_factory=dict)  # key -> (generation, deleting)
    _names: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def received(self, key: tuple[str, str], obj: Mapping[str, Any], deleted: bool) -> bool:
        """Take one watch event; returns whether it is a change to act on (not merely
        another writer's update of the status or metadata)."""
        meta = obj.get("metadata") or {}
        rv = resource_version(meta.get("resourceVersion"))
        if rv is None:
            return False
        name = key[1]
        self.seen = rv if self.seen is None else max(self.seen, rv)
        version = (meta.get("generation"), bool(meta.get("deletionTimestamp")))
        if deleted:
            self._versions.pop(key, None)
            keys = self._names.get(name, set())
            keys.discard(key)
            if not keys:
                self._names.pop(name, None)
                self.required.pop(name, None)
                self.settled.pop(name, None)
                self.contents.pop(name, None)
                return True
        elif self._versions.get(key) == version:
            return False  # status or metadata only: nothing to act on
        else:
            self._versions[key] = version
            self._names.setdefault(name, set()).add(key)
            spec = (obj.get("spec") or {}).get("profile") or {}
            self.contents[name] = (str(meta.get("namespace") or ""), str(spec.get("sha256") or ""))
        self.required[name] = rv
        self.acted = rv if self.acted is None else max(self.acted, rv)
        return True

    def begin(self, name: str) -> int | None:
        return self.required.get(name)

    def settle(self, name: str, token: int | None) -> None:
        if token is not None and self.required.get(name) == token:
            self.settled[name] = token

    def report(self, outcome: Outcome) -> Report:
        """The watermark and exceptions that are true now (see the module docstring)."""
        open_: list[tuple[int, str, LoadException]] = []
        for name, rv in self.required.items():
            if self.settled.get(name) == rv:
                exc = outcome(name)
                if exc is None:
                    continue
            else:
                namespace, sha = self.contents.get(name, ("", ""))
                exc = LoadException("Loading", namespace, sha)
            open_.append((rv, name, exc))
        open_.sort(key=lambda item: (item[0], item[1]))
        listed: dict[str, LoadException] = {}
        counts = {"Loading": 0, "Failed": 0}
        caps = {"Loading": MAX_LOADING, "Failed": MAX_FAILED}
        stop: int | None = None
        for rv, name, exc in open_:
            if counts[exc.state] >= caps[exc.state]:
                stop = rv
                break
            counts[exc.state] += 1
            listed[name] = exc
        if stop is not None:  # held just below the first profile not listed
            held = stop - 1 if stop > 1 else None
            return Report(held, held, listed)
        return Report(self.seen, self.acted, listed)


# -- leader side -------------------------------------------------------------------
@dataclass(frozen=True)
class NodeReport:
    """A parsed ArmorNode load report. `watermark` None: the node reported nothing yet."""

    watermark: int | None
    exceptions: Mapping[str, LoadException]


def parse(status: Mapping[str, Any]) -> NodeReport | None:
    """The report in an ArmorNode status, or None for a status in the earlier format (a
    map of every loaded profile: an agent not yet upgraded), read by the caller."""
    if "watermark" not in status and ("profiles" in status or "failures" in status):
        return None
    raw = status.get("exceptions")
    exceptions: dict[str, LoadException] = {}
    if isinstance(raw, Mapping):
        for name, entry in raw.items():
            if not isinstance(entry, Mapping):
                continue
            state: ExceptionState = "Failed" if entry.get("state") == "Failed" else "Loading"
            exceptions[str(name)] = LoadException(
                state,
                str(entry.get("namespace") or ""),
                str(entry.get("sha256") or ""),
                str(entry.get("message") or ""),
            )
    return NodeReport(resource_version(status.get("watermark")), exceptions)


def verdict(
    report: NodeReport, name: str, namespace: str, sha256: str, spec_rv: int, leader_seen: int | None
) -> tuple[Verdict, str]:
    """Whether the node loaded ArmorProfile `namespace/name` at content `sha256`, whose spec
    was first seen at `spec_rv`; `leader_seen` is the highest ArmorProfile resourceVersion
    the leader has seen. Never says Loaded for content the report does not prove loaded."""
    watermark = report.watermark
    if watermark is None or spec_rv > watermark:
        return "Loading", ""
    if leader_seen is None or watermark > leader_seen:
        return "Loading", "the node reported versions the leader has not seen yet"
    exc = report.exceptions.get(name)
    if exc is not None and exc.namespace in ("", namespace):
        if exc.state == "Failed" and exc.sha256 and sha256.startswith(exc.sha256):
            return "Failed", exc.message or "load failed"
        return "Loading", exc.message
    return "Loaded", ""


def delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> JSON:
    """The JSON merge patch turning status `old` into `new`: changed fields only, and
    per entry for `exceptions`, so one profile's change is one small write."""
    patch: JSON = {}
    for key, value in new.items():
        if key == "exceptions" and isinstance(old.get(key), Mapping) and isinstance(value, Mapping):
            before = old[key]
            entries: JSON = {n: e for n, e in value.items() if before.get(n) != e}
            entries.update({n: None for n in before if n not in value})
            if entries:
                patch[key] = entries
        elif old.get(key) != value:
            patch[key] = value
    patch.update({key: None for key in old if key not in new})
    return patch
