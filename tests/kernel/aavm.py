"""Boot a real AppArmor kernel under qemu and run batches of probe cases in it.

Why: compiling a profile proves its syntax, not that the kernel blocks anything. This
module builds (once, cached) a base initramfs with busybox, apparmor_parser, the
AppArmor abi/tunables/abstractions, the static `vprobe` helper and a generic /init;
appends a small per-batch archive of cases; boots the Debian kernel once per batch
under qemu TCG; and parses `CHECK <id> PASS|FAIL <detail>` lines from a second serial
port. Everything is written without root: the cpio archive is produced in Python.
See tests/kernel/README.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GUEST = HERE / "guest"
VPROBE_SRC = HERE / "vprobe.c"
FETCH_KERNEL = REPO / "hack" / "fetch-kernel.sh"
AA_FS = "/sys/kernel/security/apparmor"
#: Bump when the layout of the base image changes in a way the inputs do not show.
BASE_FORMAT = 3
SETUP_HINT = "run `make setup` (installs qemu-system-x86 busybox-static apparmor gcc libc6-dev, "
SETUP_HINT += "then bash hack/fetch-kernel.sh)"


#: Capabilities no code path of a mainline kernel checks (CAP_NET_BROADCAST is unused,
#: CAP_MAC_OVERRIDE is only checked by Smack): vprobe reports them as ERROR.
UNPROVABLE_CAPS = frozenset({"net_broadcast", "mac_override"})


class HarnessError(RuntimeError):
    """The kernel layer cannot run here; the message says how to fix it."""


def cache_dir() -> Path:
    """Where kernels, images and run logs live (shared with hack/*.sh)."""
    return Path(os.environ.get("VARMOR_CACHE", Path.home() / ".cache" / "varmor"))


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


# ---------------------------------------------------------------------------------
# newc cpio writer


class Cpio:
    """A minimal SVR4 "newc" archive writer: regular files, dirs, symlinks, devices.

    Why not the cpio tool: it needs the device nodes to exist on disk (root, mknod).
    """

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        rdev: tuple[int, int] = (0, 0),
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        name = name.lstrip("/")
        if name in self._seen:
            return
        self._seen.add(name)
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (
            self._ino,
            mode,
            uid,
            gid,
            nlink,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(name) + 1,
            0,
        )
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out += hdr + name.encode() + b"\0"
        self._out += b"\0" * (-len(self._out) % 4)
        self._out += data
        self._out += b"\0" * (-len(self._out) % 4)

    def dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory and its parents."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entry("/".join(parts[:i]), stat.S_IFDIR | mode)

    def _parent(self, name: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)

    def file(self, name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFREG | mode, data, uid=uid, gid=gid)

    def symlink(self, name: str, target: str) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parent(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, src: Path, dest: str) -> None:
        """Copy a host directory tree (files, dirs, symlinks)."""
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else f"{dest}/{rel}"
            self.dir(base)
            for f in sorted(files):
                p = Path(root) / f
                if p.is_symlink():
                    self.symlink(f"{base}/{f}", os.readlink(p))
                elif p.is_file():
                    self.file(f"{base}/{f}", p.read_bytes(), p.stat().st_mode & 0o7777)

    def finish(self) -> bytes:
        """Close the archive (TRAILER!!!), gzip it deterministically."""
        self._entry("TRAILER!!!", 0)
        return gzip.compress(bytes(self._out), compresslevel=6, mtime=0)


# ---------------------------------------------------------------------------------
# host tools, kernel, base image


def _need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if not path:
        raise HarnessError(f"{tool} is not installed: {SETUP_HINT}")
    return path


def kernel_image() -> Path:
    """The uncompressed vmlinux of the current Debian kernel (fetched once, cached)."""
    current = cache_dir() / "kernel" / "current" / "vmlinux"
    if current.exists() and os.environ.get("VARMOR_KERNEL_REFRESH") != "1":
        return current
    if os.environ.get("VARMOR_KERNEL_FETCH", "1") == "0":
        raise HarnessError(f"no kernel under {current.parent}: {SETUP_HINT}")
    try:
        out = subprocess.run(["bash", str(FETCH_KERNEL)], check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        raise HarnessError(f"hack/fetch-kernel.sh failed: {stderr.strip()[-800:]}; {SETUP_HINT}") from exc
    path = Path(out.stdout.strip().splitlines()[-1]) / "vmlinux"
    if not path.exists():
        raise HarnessError(f"hack/fetch-kernel.sh produced no vmlinux: {SETUP_HINT}")
    return path


def _ldd_libs(binaries: Iterable[str]) -> set[str]:
    libs: set[str] = set()
    for b in binaries:
        out = subprocess.run(["ldd", b], capture_output=True, text=True, check=False).stdout
        for m in re.finditer(r"(/\S+\.so[.\d]*)", out):
            libs.add(m.group(1))
    return libs


def build_vprobe(out: Path) -> Path:
    """Compile vprobe.c statically (cached by source hash)."""
    gcc = _need("gcc")
    src = VPROBE_SRC.read_bytes()
    target = out / f"vprobe-{_sha(src)[:16]}"
    if target.exists():
        return target
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    res = subprocess.run(
        [gcc, "-static", "-O2", "-s", "-Wall", "-o", str(tmp), str(VPROBE_SRC)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise HarnessError(f"compiling vprobe.c failed (needs gcc and libc6-dev): {res.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


def build_base(out: Path | None = None) -> Path:
    """The base initramfs (gzip'd newc), rebuilt only when one of its inputs changes."""
    out = out or cache_dir() / "kernel-tests"
    out.mkdir(parents=True, exist_ok=True)
    busybox = Path("/bin/busybox")
    if not busybox.exists() or not _is_static(busybox):
        raise HarnessError(f"/bin/busybox (busybox-static) is missing: {SETUP_HINT}")
    parser = _need("apparmor_parser")
    extras = [p for p in (shutil.which("aa-exec"), shutil.which("aa-features-abi")) if p]
    vprobe = build_vprobe(out)
    init = (GUEST / "init.sh").read_bytes()
    vh = (GUEST / "vh.sh").read_bytes()
    key = _sha(
        str(BASE_FORMAT).encode(),
        init,
        vh,
        vprobe.read_bytes(),
        busybox.read_bytes(),
        Path(parser).read_bytes(),
        *(Path(e).read_bytes() for e in extras),
        *(p.read_bytes() for p in sorted(Path("/etc/apparmor.d/abstractions").rglob("*")) if p.is_file()),
    )[:16]
    target = out / f"base-{key}.cpio.gz"
    if target.exists():
        return target

    c = Cpio()
    for d in (
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
        "root",
        "var/tmp",
        "etc",
        "usr/bin",
        "usr/sbin",
        "sbin",
        "bin",
        "lib/varmor",
        "fixtures",
    ):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        c.symlink(a, "/bin/busybox")
    c.file("sbin/apparmor_parser", Path(parser).read_bytes(), 0o755)
    for e in extras:
        c.file(f"usr/bin/{Path(e).name}", Path(e).read_bytes(), 0o755)
    for lib in sorted(_ldd_libs([parser, *extras])):
        real = Path(lib).resolve()
        c.file(lib, real.read_bytes(), 0o755)
    for sub in ("abi", "tunables", "abstractions"):
        c.tree(Path("/etc/apparmor.d") / sub, f"etc/apparmor.d/{sub}")
    c.dir("etc/apparmor.d/local")
    c.file("etc/apparmor/parser.conf", b"")
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\nuser:x:1000:\n")
    c.file("vprobe", vprobe.read_bytes(), 0o755)
    c.file("init", init, 0o755)
    c.file("lib/varmor/vh.sh", vh)
    # Fixtures for capability probes that need a file of another owner or group.
    c.file("fixtures/uid1000", b"fixture\n", 0o644, uid=1000, gid=1000)
    c.file("fixtures/gid1000", b"fixture\n", 0o755, uid=0, gid=1000)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(c.finish())
    os.replace(tmp, target)
    return target


def _is_static(path: Path) -> bool:
    """True when the ELF has no PT_INTERP (no `file` needed)."""
    data = path.read_bytes()[:4096]
    return b"/lib64/ld-linux" not in data


# ---------------------------------------------------------------------------------
# host-side profile compilation


def features_file() -> Path:
    """The pinned kernel features the project compiles against (`-M`)."""
    for cand in (REPO / "varmor" / "data" / "apparmor-features", Path("/usr/share/apparmor-features/features")):
        if cand.exists():
            return cand
    raise HarnessError(f"no AppArmor features file to compile against: {SETUP_HINT}")


@dataclasses.dataclass(frozen=True)
class Compile:
    """One profile to compile on the host: its text, whether rule-not-enforced is an
    error, and the text of the node-local include (`varmor/node-local`) if it needs one."""

    text: str
    strict: bool = True
    node_local: str | None = None


def compile_profiles(items: Sequence[Compile], out: Path | None = None) -> list[bytes]:
    """Compile profiles to kernel binary policy on the host with the pinned features
    (as the project's own compile step does); cached by content. Uncached profiles are
    compiled in one parser run per kind (the parser parallelises and writes one cache
    file per source, byte-identical to `-o`); a failing run is redone one by one so
    the error names its profile."""
    out = out or cache_dir() / "kernel-tests" / "compiled"
    out.mkdir(parents=True, exist_ok=True)
    parser = _need("apparmor_parser")
    feats = features_file()
    salt = _sha(feats.read_bytes(), Path(parser).read_bytes())

    def key_of(item: Compile) -> str:
        inc = (item.node_local or "").encode()
        return _sha(salt.encode(), item.text.encode(), b"strict" if item.strict else b"lax", inc)[:24]

    keys = [key_of(i) for i in items]
    todo: dict[str, Compile] = {k: i for k, i in zip(keys, items, strict=True) if not (out / f"{k}.bin").exists()}
    groups: dict[tuple[bool, str | None], list[str]] = {}
    for k, item in todo.items():
        groups.setdefault((item.strict, item.node_local), []).append(k)
    for (strict, node_local), group in groups.items():
        with tempfile.TemporaryDirectory(prefix="vk-compile-", dir=out) as tmp:
            root = Path(tmp)
            (root / "src").mkdir()
            cmd = [
                parser,
                "--config-file",
                "/dev/null",
                "-Q",
                "-W",
                "--cache-loc",
                str(root / "cache"),
                "-M",
                str(feats),
                "--warn=rule-not-enforced",
            ]
            if strict:
                cmd.append("--Werror=rule-not-enforced")
            if node_local is not None:
                (root / "inc" / "varmor").mkdir(parents=True)
                (root / "inc" / "varmor" / "node-local").write_text(node_local)
                cmd += ["-I", str(root / "inc")]
            for k in group:
                (root / "src" / k).write_text(todo[k].text)
            res = subprocess.run(
                [*cmd, *(str(root / "src" / k) for k in group)], capture_output=True, text=True, check=False
            )
            if res.returncode != 0:
                for k in group:  # find the culprit, with its own message
                    one = subprocess.run([*cmd, str(root / "src" / k)], capture_output=True, text=True, check=False)
                    if one.returncode != 0:
                        raise HarnessError(
                            f"apparmor_parser failed on host:\n{one.stderr}\n--- profile ---\n{todo[k].text}"
                        )
                raise HarnessError(f"apparmor_parser failed on host:\n{res.stderr}")
            for k in group:
                built = list((root / "cache").glob(f"*/{k}"))
                if len(built) != 1:
                    raise HarnessError(f"apparmor_parser wrote no cache file for {k}: {res.stderr}")
                os.replace(built[0], out / f"{k}.bin")
    return [(out / f"{k}.bin").read_bytes() for k in keys]


# ---------------------------------------------------------------------------------
# cases and batches


@dataclasses.dataclass
class AuditExpect:
    """A kernel audit record one check expects (every substring on one line), or, with
    absent=True, one that must not exist."""

    check_id: str
    substrings: tuple[str, ...]
    absent: bool = False

    def judge(self, lines: Sequence[str]) -> tuple[bool, str]:
        hit = next((ln for ln in lines if all(s in ln for s in self.substrings)), None)
        if self.absent:
            return (hit is None, f"unexpected record: {hit}" if hit else "no such record")
        if hit:
            return True, hit
        related = [ln for ln in lines if self.substrings[0] in ln][:8]
        return False, (
            f"no audit record with {list(self.substrings)}; records matching {self.substrings[0]!r}: {related}"
        )


@dataclasses.dataclass
class Case:
    """One directory under /cases: profiles to ship, and a script of checks.

    Checks are declared through the methods, so the host knows every check ID it must
    get back (a missing one means the guest crashed or hung).
    """

    name: str
    lines: list[str] = dataclasses.field(default_factory=list)
    check_ids: list[str] = dataclasses.field(default_factory=list)
    audits: list[AuditExpect] = dataclasses.field(default_factory=list)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)
    binaries: dict[str, Compile] = dataclasses.field(default_factory=dict)

    def _id(self, check: str) -> str:
        cid = f"{self.name}/{check}"
        if cid in self.check_ids:
            raise ValueError(f"duplicate check id {cid}")
        self.check_ids.append(cid)
        return cid

    def sh(self, line: str) -> None:
        """A raw shell line (setup)."""
        self.lines.append(line)

    def add_file(self, fname: str, text: str) -> str:
        """Ship a text file in the case directory; returns its guest path."""
        self.texts[fname] = text
        return f"/cases/{self.name}/{fname}"

    def profile_text(self, fname: str, text: str) -> str:
        """Ship a text profile (for in-guest apparmor_parser); returns its guest path."""
        self.texts[fname] = text
        return f"/cases/{self.name}/{fname}"

    def profile_bin(self, fname: str, text: str, werror: bool = True, node_local: str | None = None) -> str:
        """Ship a profile compiled on the host; returns its guest path."""
        self.binaries[fname] = Compile(text, werror, node_local)
        return f"/cases/{self.name}/{fname}"

    def load_bin(self, check: str, fname: str, text: str, werror: bool = True, node_local: str | None = None) -> None:
        """Host-compile TEXT, write it to .replace in the guest, check it loaded.
        werror=False compiles without --Werror=rule-not-enforced (to show what the
        kernel does with a rule the parser would drop); node_local is the text of the
        `varmor/node-local` include."""
        path = self.profile_bin(fname, text, werror, node_local)
        self.lines.append(f"vh_run {q(self._id(check))} vh_load_bin {q(path)}")

    def load_text(self, check: str, fname: str, text: str) -> None:
        """Ship TEXT and load it with the guest's apparmor_parser -r."""
        path = self.profile_text(fname, text)
        self.lines.append(f"vh_run {q(self._id(check))} vh_load_text {q(path)}")

    def run(self, check: str, command: str) -> None:
        """A shell command that must succeed."""
        self.lines.append(f"vh_run {q(self._id(check))} sh -c {q(command)}")

    def expect(
        self,
        check: str,
        want: str,
        op: str | Sequence[str],
        profile: str | None = None,
        target: str | None = None,
    ) -> str:
        """vprobe OP under PROFILE (optionally via exec of TARGET) must give WANT."""
        assert want in ("ALLOW", "DENY", "ERROR"), want
        args = shlex.split(op) if isinstance(op, str) else list(op)
        pre: list[str] = []
        if profile:
            pre += ["-p", profile]
        if target:
            pre += ["-t", target]
        cid = self._id(check)
        self.lines.append(" ".join(["vh_check", q(cid), want, *map(q, pre), "--", *map(q, args)]))
        return cid

    def expect_label(self, check: str, label: str, profile: str | None = None, target: str | None = None) -> None:
        """vprobe must run under LABEL (e.g. `p//child (enforce)`)."""
        pre = (["-p", profile] if profile else []) + (["-t", target] if target else [])
        cid = self._id(check)
        self.lines.append(" ".join(["vh_check_label", q(cid), q(label), *map(q, pre), "--", "current"]))

    def expect_label_after(
        self, check: str, want: str, label: str, op: str, profile: str | None = None, target: str | None = None
    ) -> None:
        """vprobe OP under PROFILE must give WANT, and the label it reads AFTER the
        operation must be LABEL (a refused profile change leaves the process where it was)."""
        assert want in ("ALLOW", "DENY", "ERROR"), want
        pre = (["-p", profile] if profile else []) + (["-t", target] if target else [])
        cid = self._id(check)
        args = [q(cid), want, q(label), *map(q, pre), "--", *map(q, shlex.split(op))]
        self.lines.append(" ".join(["vh_check_label_after", *args]))

    def expect_audit(self, check: str, *substrings: str) -> None:
        """The kernel must log a record containing all SUBSTRINGS (checked on the host)."""
        self.audits.append(AuditExpect(self._id(check), tuple(substrings)))

    def expect_no_audit(self, check: str, *substrings: str) -> None:
        """The kernel must NOT log a record containing all SUBSTRINGS."""
        self.audits.append(AuditExpect(self._id(check), tuple(substrings), absent=True))

    def srv_start(self, fds: tuple[int, int], *command: str) -> None:
        """Start a long-running server (see vh_srv_start) on fds (3, 4) or (5, 6)."""
        self.lines.append(" ".join(["vh_srv_start", str(fds[0]), str(fds[1]), *map(q, command)]))

    def srv(self, check: str, want: str, fds: tuple[int, int], op: str) -> None:
        """Ask a running server to do OP; PASS when the verdict is WANT."""
        self.lines.append(f"vh_srv {q(self._id(check))} {want} {fds[0]} {fds[1]} {op}")

    def srv_label(self, check: str, label: str, fds: tuple[int, int]) -> None:
        """The running server's current label must be LABEL."""
        self.lines.append(f"vh_srv_label {q(self._id(check))} {q(label)} {fds[0]} {fds[1]}")

    def srv_stop(self, fds: tuple[int, int]) -> None:
        self.lines.append(f"vh_srv_stop {fds[0]} {fds[1]}")

    def script(self) -> str:
        return "\n".join(self.lines) + "\n"


def q(s: str) -> str:
    return shlex.quote(s)


@dataclasses.dataclass
class BootResult:
    """Everything one boot produced."""

    checks: dict[str, tuple[bool, str]]
    audit_lines: list[str]
    console: str
    results_raw: str
    seconds: float
    returncode: int | None
    timed_out: bool
    run_dir: Path
    done: bool

    def failure_context(self, tail: int = 60) -> str:
        """What to show when a check is missing: the end of both serial logs."""
        con = "\n".join(self.console.splitlines()[-tail:])
        res = "\n".join(self.results_raw.splitlines()[-20:])
        state = "timed out" if self.timed_out else f"exited rc={self.returncode}"
        return (
            f"qemu {state} after {self.seconds:.1f}s, DONE={'yes' if self.done else 'no'}; "
            f"logs in {self.run_dir}\n--- console (ttyS0) tail ---\n{con}\n"
            f"--- results (ttyS1) tail ---\n{res}"
        )


def parse_results(text: str) -> tuple[dict[str, tuple[bool, str]], list[str], bool]:
    """Parse the result port: CHECK lines, AUDIT lines, and whether DONE arrived."""
    checks: dict[str, tuple[bool, str]] = {}
    audits: list[str] = []
    done = False
    for raw in text.splitlines():
        line = raw.strip("\r\n\x00 ")
        if line.startswith("CHECK "):
            parts = line.split(" ", 3)
            if len(parts) >= 3:
                cid, status = parts[1], parts[2]
                detail = parts[3] if len(parts) > 3 else ""
                # The first verdict for an id wins; a duplicate is a harness bug.
                checks.setdefault(cid, (status == "PASS", detail))
        elif line.startswith("AUDIT "):
            audits.append(line[6:])
        elif line.startswith("DONE"):
            done = True
    return checks, audits, done


#: Every batch built in this process, so the session can boot them all at once.
REGISTRY: list[Batch] = []


class Batch:
    """A set of cases run in one boot."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases: list[Case] = []
        REGISTRY.append(self)

    def case(self, name: str) -> Case:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"bad case name {name!r}")
        c = Case(f"{len(self.cases):04d}-{name}")
        self.cases.append(c)
        return c

    def check_ids(self) -> list[str]:
        return [cid for c in self.cases for cid in c.check_ids]

    def archive(self) -> bytes:
        """The per-batch cases archive (appended to the base initramfs)."""
        c = Cpio()
        c.dir("cases")
        texts = [(case, fn, t) for case in self.cases for fn, t in case.binaries.items()]
        bins = compile_profiles([t for _, _, t in texts])
        for (case, fn, _), data in zip(texts, bins, strict=True):
            c.file(f"cases/{case.name}/{fn}", data)
        for case in self.cases:
            for fn, text in case.texts.items():
                c.file(f"cases/{case.name}/{fn}", text.encode())
            c.file(f"cases/{case.name}/run.sh", case.script().encode(), 0o755)
        return c.finish()

    def run(self, timeout: float | None = None, dmesg: bool = False) -> BootResult:
        """Build, boot once, parse; host-side audit expectations become checks."""
        qemu = _need("qemu-system-x86_64")
        kernel = kernel_image()
        base = build_base()
        run_dir = cache_dir() / "kernel-tests" / "runs" / self.name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        initrd = run_dir / "initrd.cpio.gz"
        initrd.write_bytes(base.read_bytes() + self.archive())
        console, results = run_dir / "console.log", run_dir / "results.log"
        timeout = timeout or float(os.environ.get("VARMOR_KERNEL_TIMEOUT", "170"))
        cmd = [
            # -M pc, not microvm: on a loaded host microvm hung in early boot (TSC/timer
            # calibration) in about half of the boots; pc never did (README).
            qemu,
            "-accel",
            "tcg",
            "-M",
            "pc",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 panic=-1 loglevel=4 audit=1 audit_backlog_limit=65536 "
            "log_buf_len=16M" + (" varmor.dmesg=1" if dmesg else ""),
            "-serial",
            f"file:{console}",
            "-serial",
            f"file:{results}",
        ]
        (run_dir / "cmdline").write_text(shlex.join(cmd) + "\n")
        start = time.monotonic()
        timed_out = False
        rc: int | None = None
        proc = spawn(cmd)
        try:
            _, stderr = proc.communicate(timeout=timeout)
            rc = proc.returncode
            (run_dir / "qemu.stderr").write_bytes(stderr)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            timed_out = True
        seconds = time.monotonic() - start
        con = console.read_text(errors="replace") if console.exists() else ""
        raw = results.read_text(errors="replace") if results.exists() else ""
        checks, audit_lines, done = parse_results(raw)
        for case in self.cases:
            for exp in case.audits:
                # Only a completed boot can prove a record absent.
                if done or not exp.absent:
                    checks[exp.check_id] = exp.judge(audit_lines)
        (run_dir / "audit.log").write_text("\n".join(audit_lines) + "\n")
        return BootResult(checks, audit_lines, con, raw, seconds, rc, timed_out, run_dir, done)


SPAWN_ATTEMPTS = 3


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start qemu; a failure of the start itself (fork or exec: EAGAIN, ENOMEM, EFAULT on a
    host short of memory for a moment) is tried again twice, then reported with the
    host's available memory, since it is about the host, not about the batch."""
    for attempt in range(1, SPAWN_ATTEMPTS + 1):
        try:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            if attempt == SPAWN_ATTEMPTS:
                raise HarnessError(f"cannot start {cmd[0]} ({exc}; {_available_memory()})") from exc
            time.sleep(attempt)  # a retry pause, not a wait for a condition
    raise AssertionError("unreachable")


def _available_memory() -> str:
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return "memory unknown"
    found = re.search(r"MemAvailable:\s+(\d+) kB", meminfo)
    return f"{int(found.group(1)) // 1024} MiB available" if found else "memory unknown"


def preflight() -> None:
    """Fail fast, with the fix, when a tool of the kernel layer is missing."""
    for tool in ("qemu-system-x86_64", "apparmor_parser", "gcc"):
        _need(tool)
    if not Path("/bin/busybox").exists():
        raise HarnessError(f"/bin/busybox (busybox-static) is missing: {SETUP_HINT}")


def assert_check(result: BootResult, check_id: str) -> None:
    """One check's verdict; a missing check is a failure with both serial logs."""
    if check_id not in result.checks:
        pytest.fail(
            f"check {check_id} produced no result (guest crashed, hung or the case "
            f"timed out)\n{result.failure_context()}",
            pytrace=False,
        )
    ok, detail = result.checks[check_id]
    if not ok:
        pytest.fail(f"{check_id}: {detail}", pytrace=False)
