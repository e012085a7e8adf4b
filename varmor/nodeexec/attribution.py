"""Which pod an audit record came from: the record's pid -> `/proc/<pid>/cgroup` -> the pod
UID and container ID in the kubelet's cgroup path -> the pod, from the watch of this node's
pods. One profile serves every pod of a policy, so without this a violation names only the
node and the profile.

Both cgroup drivers are read: cgroupfs (`/kubepods/besteffort/pod<uid>/<id>`) and systemd
(`.../kubepods-besteffort-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`). The
pod comes from its UID (known from scheduling on), the container from its ID once the
kubelet has reported it. A short-lived process is often gone when its record is read; its
parent (from the event's SYSCALL record), in the same pod, usually is not. A pid whose
process started after the record is a reused one and names nothing. What cannot be resolved
is reported as unattributed, with the reason, never dropped. The agent reads the host's /proc (`--host-proc`),
a read of the few bytes of one file per record, in a thread.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varmor.kube.client import JSON
from varmor.kube.informer import EventType

log = logging.getLogger(__name__)
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")
_CONTAINER_ID = re.compile(r"^(?:[a-z]+(?:-[a-z]+)*-)?([0-9a-f]{64})(?:\.scope)?$")
_PID = re.compile(r"^[1-9][0-9]{0,9}$")
_STATUSES = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")


def container_statuses(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every container status of a pod (init, regular, ephemeral), skipping misshapen ones."""
    status = pod.get("status") or {}
    if not isinstance(status, Mapping):
        return
    for group in _STATUSES:
        for entry in status.get(group) or ():
            if isinstance(entry, Mapping):
                yield entry


MAX_CGROUP_BYTES = 4096


def cgroup_ids(text: str) -> tuple[str | None, str | None]:
    """(pod UID, container ID) from a `/proc/<pid>/cgroup`, either when present. The
    outermost pod segment counts, and a container only as the segment right below it: a
    workload allowed to make cgroups of its own nests them deeper, where they name nothing."""
    for line in text.splitlines():
        _, _, path = line.partition("::") if line.startswith("0::") else line.rpartition(":")
        segments = path.split("/")
        for i, segment in enumerate(segments):
            if (m := _POD_UID.search(segment)) is not None:
                below = segments[i + 1] if i + 1 < len(segments) else ""
                found = _CONTAINER_ID.match(below)
                return m.group(1).replace("_", "-"), found.group(1) if found else None
    return None, None


def started_at(stat: str, boot_time: float, ticks: int) -> float | None:
    """A process's start as wall time, from `/proc/<pid>/stat` (field 22, after the command
    name, which may hold spaces and parentheses) and the boot time from `/proc/stat`."""
    fields = stat.rpartition(")")[2].split()
    try:
        return boot_time + int(fields[19]) / ticks
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class PodRef:
    """The pod (and, when the kubelet has reported it, the container) a record came from."""

    namespace: str
    name: str
    uid: str
    container: str = ""
    image: str = ""

    def as_json(self) -> dict[str, str]:
        out = {"namespace": self.namespace, "name": self.name, "uid": self.uid}
        if self.container:
            out |= {"container": self.container, "image": self.image}
        return out

    def describe(self) -> str:
        where = f"pod {self.namespace}/{self.name}"
        return f"{where} (container {self.container}, image {self.image})" if self.container else where


@dataclass(frozen=True)
class Attribution:
    pod: PodRef | None
    reason: str = ""  # why there is no pod: the pid is gone, not a pod's, or the pod unknown


def _container_id(status: Mapping[str, Any]) -> str:
    value = str(status.get("containerID") or "")
    return value.partition("://")[2] or value


class PodIndex:
    """This node's pods by UID, and their containers by ID (a handler of the pod watch)."""

    def __init__(self) -> None:
        self.pods: dict[str, PodRef] = {}
        self.containers: dict[str, PodRef] = {}
        self._ids_of: dict[str, set[str]] = {}  # pod UID -> its container IDs
        self._uid_of: dict[tuple[str, str], str] = {}  # (namespace, name) -> UID

    def _forget(self, uid: str) -> None:
        self.pods.pop(uid, None)
        for cid in self._ids_of.pop(uid, set()):
            self.containers.pop(cid, None)

    async def on_pod(self, event: EventType, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        previous = self._uid_of.pop(key, None)
        if previous is not None:  # a relist may replace a pod by a new one of the same name
            self._forget(previous)
        self._forget(uid)
        if event == "DELETED" or not uid:
            return
        self._uid_of[key] = uid
        ref = PodRef(str(meta.get("namespace") or ""), str(meta.get("name") or ""), uid)
        self.pods[uid] = ref
        ids: set[str] = set()
        for status in container_statuses(pod):
            cid = _container_id(status)
            if cid:
                name, image = str(status.get("name") or ""), str(status.get("image") or "")
                self.containers[cid] = PodRef(ref.namespace, ref.name, uid, name, image)
                ids.add(cid)
        self._ids_of[uid] = ids

    def find(self, pod_uid: str | None, container: str | None) -> PodRef | None:
        found = self.containers.get(container or "")
        if found is not None and found.uid == pod_uid:
            return found
        return self.pods.get(pod_uid or "")


class Attributor:
    """Reads the host's /proc. A pid read after its process exited may name a newer
    process: one that started after the record (`when`, the record's time) is not it."""

    def __init__(self, proc: Path, index: PodIndex) -> None:
        self.proc = proc
        self.index = index
        self.ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time: float | None = None

    def boot_time(self) -> float:
        if self._boot_time is None:
            for line in (self.proc / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    self._boot_time = float(line.split()[1])
                    break
            else:
                raise OSError(f"no btime in {self.proc / 'stat'}")
        return self._boot_time

    def attribute(self, pid: str | None, parent: str | None = None, when: float | None = None) -> Attribution:
        """Blocking (a small file read or two): call it in a thread. `parent` is the pid's
        parent from the event's SYSCALL record: a short-lived process (`cat` denied a file)
        is gone when its record is read, while its parent, in the same pod, still runs."""
        if not pid or not _PID.match(pid):
            return Attribution(None, "the record names no pid")
        text = self._cgroup(pid, when)
        if text is None and parent and _PID.match(parent):
            text = self._cgroup(parent, when)
        if text is None:
            also = f" (its parent {parent} too)" if parent else ""
            return Attribution(None, f"pid {pid} exited before the agent read the record{also}")
        pod_uid, container = cgroup_ids(text)
        if pod_uid is None and container is None:
            return Attribution(None, f"pid {pid} runs in no pod's cgroup")
        found = self.index.find(pod_uid, container)
        if found is None:
            return Attribution(None, f"pid {pid} is in pod {pod_uid or '?'}, not (yet) known on this node")
        return Attribution(found)

    def _cgroup(self, pid: str, when: float | None) -> str | None:
        """The cgroup of `pid` if it is the process that was there at `when`."""
        try:
            with open(self.proc / pid / "cgroup", "rb") as f:
                text = f.read(MAX_CGROUP_BYTES).decode("utf-8", "replace")
            if when is not None:
                with open(self.proc / pid / "stat", "rb") as f:
                    start = started_at(
                        f.read(MAX_CGROUP_BYTES).decode("utf-8", "replace"), self.boot_time(), self.ticks
                    )
                # btime is whole seconds: a process started more than a second after the
                # record is a newer one under a reused pid.
                if start is None or start > when + 1.0:
                    return None
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError as exc:
            log.warning("cannot read /proc/%s: %s", pid, exc.strerror)
            return None
        return text
