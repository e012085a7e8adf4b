"""The node-local include: the only node-specific part of a profile.

Rules about host disks (`disallow-debug-disk-device`, `disallow-mount-disk-device`) refer to
`@{VARMOR_DISK_DEVICES}`; the agent writes this file with the node's devices (from
/proc/partitions) under `<profile dir>/varmor/node-local`, so the ArmorProfile text and its
hash are identical on every node. vArmor instead rendered a Go html/template per node.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from varmor.rules import DISK_DEVICES_VAR

NODE_LOCAL_INCLUDE = "varmor/node-local"
# An AppArmor variable cannot be empty; this path never names a real device.
NO_DEVICE_PLACEHOLDER = "/dev/.varmor-no-disk-device"
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+:-]*(/[A-Za-z0-9][A-Za-z0-9._+:-]*)*$")


class DiskDeviceError(ValueError):
    """A device name that could change the meaning of the include file."""


def _device_path(device: str) -> str:
    name = device.removeprefix("/dev/")
    if not _DEVICE.match(name) or ".." in name:
        raise DiskDeviceError(f"refusing disk device name {device!r}")
    return f"/dev/{name}"


def node_local_include(disk_devices: Sequence[str]) -> str:
    """Text of `<profile dir>/varmor/node-local` for a node with these disk devices
    (names like `sda`, `nvme0n1p1` or `/dev/sda`). Sorted and de-duplicated, so the file
    changes only when the devices do."""
    paths = sorted({_device_path(d) for d in disk_devices}) or [NO_DEVICE_PLACEHOLDER]
    return (
        "# Written by the varmor agent: this node's disk devices. Do not edit.\n"
        f"{DISK_DEVICES_VAR} = {' '.join(paths)}\n"
    )
