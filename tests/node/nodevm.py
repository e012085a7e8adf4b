"""A real Kubernetes node in the AppArmor VM: kubelet + containerd 2 + runc on the Debian
AppArmor kernel under qemu (TCG), registered with the test control plane on the host.

What it is made of, each cached under $VARMOR_CACHE/node/ and rebuilt only when an input
changes:
- the node's disk: a Debian bookworm root file system (mmdebstrap: python3, apparmor,
  iproute2, tini) with the node binaries (hack/build-node.sh), varmor's dependencies
  (pip --target), the guest init and configs, and two workload images written as OCI
  archives (busybox-static; the pause image is busybox sleeping), as an ext4 image
  (`mke2fs -d`, no root mount needed). Each VM boots a sparse copy, so a reboot keeps
  what the node wrote, as a real node's disk does;
- a small initramfs that loads the kernel modules the node needs and mounts that disk;
- per boot, a config disk (a raw tar): the node's name, the kubelet's client certificate,
  the agent's kubeconfig (the chart's agent ServiceAccount, token bound to the agent's
  Pod) and varmor's source, so a code change needs no rebuild.

Network: qemu's user network with `restrict=on`: the guest reaches nothing but the API
server, through one `guestfwd` rule (10.0.2.100:443 -> the host's loopback port, each
connection relayed by socat). The API server never reaches the kubelet, so results come
back through pod status (exit codes, termination messages) or the control port: a second
serial line on which the guest runs the host's commands (`NodeVM.run`). Where the API server
must call into the node (the chart's webhook, in the node's network namespace), a `hostfwd`
rule maps a host loopback port to it; nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel.aavm import Cpio
from varmor.dev import oci
from varmor.dev.cluster import NODE_VM_API_ADDRESS
from varmor.dev.paths import K8S_VERSION, REPO_ROOT, cache_dir

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
#: Bump when the disk's layout changes in a way its inputs do not show.
NODE_FORMAT = 1
DEBIAN_PACKAGES = (
    "python3", "apparmor", "auditd", "iproute2", "iptables", "kmod", "procps", "tini", "ca-certificates"
)  # fmt: skip
#: Loaded by the initramfs, dependencies first (resolved from each module's .modinfo).
MODULES = (
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "e1000", "overlay", "veth", "br_netfilter",
    # the CNI bridge's masquerade (iptables-nft): pods reach the API server as the node does
    "nf_tables", "nft_compat", "nft_chain_nat", "xt_MASQUERADE", "xt_comment",
)  # fmt: skip
API_ADDRESS = NODE_VM_API_ADDRESS  # what the guest dials for the API server (guestfwd)
SETUP_HINT = "run `make setup` (mmdebstrap, socat, e2fsprogs, qemu-system-x86; hack/build-node.sh)"
IMAGES = ("varmor.local/busybox:1", "varmor.local/pause:1")


class NodeError(RuntimeError):
    """The node layer cannot run here, or the node did not come up; the message says why."""


def node_cache() -> Path:
    path = cache_dir() / "node"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(argv: list[str], **kwargs: object) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv[:3])} failed ({result.returncode}): {result.stderr[-3000:]}")
    return str(result.stdout)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise NodeError(f"{tool} is not installed: {SETUP_HINT}")
    return path


def node_binaries(version: str = K8S_VERSION) -> Path:
    """The kubelet of `version`, containerd, runc and the CNI plugins (hack/build-node.sh)."""
    return Path(
        _run(["bash", str(REPO_ROOT / "hack" / "build-node.sh")], env={**os.environ, "K8S_VERSION": version}).strip()
    )


def kernel_dir() -> Path:
    return Path(_run(["bash", str(REPO_ROOT / "hack" / "fetch-kernel.sh")]).strip())


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


# -- the initramfs ---------------------------------------------------------------------


def _module_index(modules: Path) -> dict[str, Path]:
    return {p.name.removesuffix(".ko"): p for p in modules.rglob("*.ko")}


def _depends(path: Path) -> list[str]:
    found = re.search(rb"depends=([^\x00]*)\x00", path.read_bytes())
    return [d for d in found.group(1).decode().split(",") if d] if found else []


def module_order(modules: Path, wanted: tuple[str, ...] = MODULES) -> list[Path]:
    """`wanted` and their dependencies, each after what it depends on."""
    index = _module_index(modules)
    order: list[Path] = []

    def visit(name: str) -> None:
        path = index.get(name.replace("-", "_")) or index.get(name)
        if path is None:
            raise NodeError(f"kernel module {name} not found under {modules}")
        if path in order:
            return
        for dep in _depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def build_initramfs(kernel: Path) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise NodeError(f"/bin/busybox (busybox-static) is missing: {SETUP_HINT}")
    order = module_order(kernel / "modules")
    stage1 = (GUEST / "stage1.sh").read_bytes()
    key = _digest(str(NODE_FORMAT).encode(), stage1, busybox.read_bytes(), *(p.read_bytes() for p in order))
    target = node_cache() / f"initramfs-{key}.cpio.gz"
    if target.exists():
        return target
    c = Cpio()
    for d in ("proc", "sys", "dev", "newroot", "bin", "sbin", "modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "umount", "insmod", "mkdir", "cat", "echo", "sleep", "switch_root"):
        c.symlink(f"bin/{applet}", "/bin/busybox")
    for path in order:
        c.file(f"modules/{path.name}", path.read_bytes())
    c.file("modules.order", "\n".join(p.name for p in order).encode() + b"\n")
    c.file("init", stage1, 0o755)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(c.finish())
    os.replace(tmp, target)
    return target


# -- the node's disk ----------------------------------------------------------------------


def _runtime_requirements() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def busybox_layer() -> bytes:
    busybox = Path("/bin/busybox").read_bytes()
    applets = _run(["/bin/busybox", "--list"]).split()
    return oci.Layer(
        # /usr/local/bin/probe: busybox under another name, a target executable of its own
        # (application granularity: a child profile attaches by the executable's path).
        files={"bin/busybox": (busybox, 0o755), "usr/local/bin/probe": (busybox, 0o755), "tmp/.keep": (b"", 0o644)},
        symlinks={f"bin/{a}": "busybox" for a in applets if a != "busybox"},
    ).tar()


def workload_images() -> dict[str, bytes]:
    """The images pods run (no registry: imported into containerd at boot)."""
    layer = busybox_layer()
    return {
        IMAGES[0]: oci.image_archive(IMAGES[0], [layer], config={"Cmd": ["/bin/sh"]}),
        IMAGES[1]: oci.image_archive(IMAGES[1], [layer], config={"Entrypoint": ["/bin/sleep", "2147483647"]}),
    }


def build_disk(binaries: Path) -> Path:
    """The node's root file system as an ext4 image (cached by its inputs)."""
    for tool in ("mmdebstrap", "mke2fs"):
        _need(tool)
    guest_files = sorted(p for p in GUEST.rglob("*") if p.is_file())
    bins = sorted(p for p in binaries.rglob("*") if p.is_file())
    key = _digest(
        str(NODE_FORMAT).encode(),
        Path(__file__).read_bytes(),  # how the disk is put together
        " ".join(DEBIAN_PACKAGES).encode(),
        "\n".join(_runtime_requirements()).encode(),
        sys.version.encode(),
        *(p.read_bytes() for p in guest_files),
        *(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for p in bins),
    )
    target = node_cache() / f"disk-{key}.ext4"
    if target.exists():
        return target
    work = node_cache() / f"build-{key}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    work.mkdir(parents=True)
    try:
        _run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm", str(root)],
            timeout=900,
        )
        _install_node(root, binaries)
        _run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--only-binary=:all:",
             "--target", str(root / "opt/varmor/lib"), *_runtime_requirements()],
            timeout=900,
        )  # fmt: skip
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"):
            shutil.rmtree(root / junk, ignore_errors=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "varmor-node", "-d", str(root), str(tmp), "3G"])
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _install_node(root: Path, binaries: Path) -> None:
    local = root / "usr/local"
    (local / "bin").mkdir(parents=True, exist_ok=True)
    (local / "sbin").mkdir(parents=True, exist_ok=True)
    for name in ("kubelet", "containerd", "ctr", "containerd-shim-runc-v2"):
        shutil.copy2(binaries / name, local / "bin" / name)
    shutil.copy2(binaries / "runc", local / "sbin" / "runc")
    cni = root / "opt/cni/bin"
    cni.mkdir(parents=True, exist_ok=True)
    for plugin in (binaries / "cni").iterdir():
        shutil.copy2(plugin, cni / plugin.name)
    shutil.copy2(GUEST / "node-init.sh", root / "sbin/varmor-node-init")
    (root / "sbin/varmor-node-init").chmod(0o755)
    configs = {
        "etc/containerd/config.toml": "containerd.toml",
        "etc/kubernetes/kubelet.yaml": "kubelet.yaml",
        "etc/cni/net.d/10-varmor.conflist": "cni.conflist",
    }
    for rel, name in configs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(GUEST / name, root / rel)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")  # containerd copies it into pods
    images = root / "var/lib/varmor/images"
    images.mkdir(parents=True, exist_ok=True)
    for name, archive in workload_images().items():
        (images / f"{name.split('/')[-1].replace(':', '-')}.tar").write_bytes(archive)
    for d in ("var/lib/kubelet", "var/lib/containerd", "var/log", "etc/apparmor.d", "opt/varmor/lib"):
        (root / d).mkdir(parents=True, exist_ok=True)


# -- one VM ---------------------------------------------------------------------------------


@dataclass
class NodeConfig:
    """What one boot is told: the node's name and every file it needs from the host."""

    name: str
    api_port: int
    files: dict[str, bytes] = field(default_factory=dict)
    agent_args: list[str] = field(default_factory=list)
    #: OCI archives attached as read-only disks (/dev/vdc, ...) and imported at boot.
    images: list[Path] = field(default_factory=list)
    #: host loopback port -> guest port (qemu hostfwd), e.g. a hostNetwork webhook's.
    host_ports: dict[int, int] = field(default_factory=dict)

    @property
    def image_devices(self) -> list[str]:
        return [f"/dev/vd{chr(ord('c') + i)}" for i in range(len(self.images))]

    def archive(self) -> bytes:
        env = (
            f"NODE_NAME={self.name}\nAGENT_ARGS='{' '.join(self.agent_args)}'\nKUBELET_ARGS=''\n"
            f"IMAGE_DEVICES='{' '.join(self.image_devices)}'\n"
        )
        files = {"node.env": env.encode(), **self.files}
        src = REPO_ROOT / "varmor"
        for path in sorted(src.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"src/varmor/{path.relative_to(src)}"] = path.read_bytes()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o600
                out.addfile(info, io.BytesIO(data))
        return buf.getvalue()


class NodeVM:
    """One node VM: boot, run commands in the guest, reboot, stop."""

    def __init__(
        self,
        workdir: Path,
        config: NodeConfig,
        *,
        kube_version: str = K8S_VERSION,
        memory_mb: int = 2048,
        clock_offset: dt.timedelta = dt.timedelta(0),
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.kube_version = kube_version
        self.memory_mb = memory_mb
        self.clock_offset = clock_offset  # the guest's clock against the host's (its RTC at boot)
        self.proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._next_id = 0

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    def _rtc_base(self) -> str:
        """The guest's real-time clock at boot: the host's time moved by `clock_offset` (the
        kernel sets its clock from it; nothing in the guest corrects it later)."""
        return (dt.datetime.now(dt.UTC) + self.clock_offset).strftime("%Y-%m-%dT%H:%M:%S")

    def start(self) -> None:
        qemu, socat = _need("qemu-system-x86_64"), _need("socat")
        kernel = kernel_dir()
        binaries = node_binaries(self.kube_version)
        disk = build_disk(binaries)
        initramfs = build_initramfs(kernel)
        self.workdir.mkdir(parents=True, exist_ok=True)
        node_disk = self.workdir / "node.ext4"
        _run(["cp", "--sparse=always", str(disk), str(node_disk)])
        config_disk = self.workdir / "config.tar"
        config_disk.write_bytes(self.config.archive())
        ctl = self.workdir / "ctl.sock"
        relay = f"cmd:{socat} - TCP:127.0.0.1:{self.config.api_port}"
        forwards = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.config.host_ports.items())
        images = [a for path in self.config.images for a in ("-drive", f"file={path},format=raw,if=virtio,readonly=on")]
        argv = [
            qemu, "-accel", "tcg", "-M", "pc", "-cpu", "max", "-m", str(self.memory_mb), "-smp", "1",
            "-nodefaults", "-display", "none", "-rtc", f"base={self._rtc_base()},clock=host",
            "-kernel", str(kernel / "vmlinuz"), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=-1 audit=1 audit_backlog_limit=8192 apparmor=1 security=apparmor",
            "-drive", f"file={node_disk},format=raw,if=virtio,cache=unsafe",
            "-drive", f"file={config_disk},format=raw,if=virtio,readonly=on",
            *images,
            "-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{API_ADDRESS}:443-{relay}{forwards}",
            "-device", "e1000,netdev=n0",
            "-serial", f"file:{self.console}",
            "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
            "-serial", "chardev:ctl",
        ]  # fmt: skip
        with (self.workdir / "qemu.log").open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not ctl.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"qemu did not start: {(self.workdir / 'qemu.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self._ctl = socket.socket(socket.AF_UNIX)
        self._ctl.connect(str(ctl))
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        assert self._ctl is not None
        buf = b""
        while True:
            try:
                chunk = self._ctl.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            with self._cond:
                self._lines.extend(line.decode(errors="replace").rstrip("\r") for line in lines)
                self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float, *, after: int = 0) -> tuple[int, str]:
        """The first control-port line from index `after` that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self._lines)):
                    if self._lines[i].startswith(prefix):
                        return i, self._lines[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise NodeError(f"no {prefix!r} from the node within {timeout}s:\n{self.console_tail()}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        with self._cond:
            return len(self._lines)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run `command` with sh in the guest: (exit code, output)."""
        assert self._ctl is not None
        self._next_id += 1
        ident = f"c{self._next_id}"
        start = self.mark()
        self._ctl.sendall(f"{ident} {command}\n".encode())
        index, line = self.wait_line(f"RC {ident} ", timeout, after=start)
        with self._cond:
            out = [ln[len(f"OUT {ident} ") :] for ln in self._lines[start:index] if ln.startswith(f"OUT {ident} ")]
        return int(line.split()[-1]), "\n".join(out)

    def reboot(self, timeout: float = 180.0) -> None:
        """A hard reboot after a sync, as a power cycle with clean buffers; returns once the
        guest's init is serving the control port again."""
        assert self._ctl is not None
        start = self.mark()
        self._ctl.sendall(b"reboot sync; echo b > /proc/sysrq-trigger\n")
        self.wait_line("READY", timeout, after=start)

    def console_tail(self, lines: int = 60) -> str:
        text = self.console.read_text(errors="replace") if self.console.exists() else "(no console)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def kubeconfig(user: dict[str, str]) -> bytes:
    """A kubeconfig for the guest: the API server through the forward, its certificate
    checked as `localhost` (a name it has; the forwarded address is not in it)."""
    cluster = {"server": f"https://{API_ADDRESS}:443", "certificate-authority": "/run/varmor/ca.crt",
               "tls-server-name": "localhost"}  # fmt: skip
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    return json.dumps(config).encode()
