"""The image's root file system, built and entered with no container engine: Debian from
mmdebstrap, a venv installed inside it with chroot, then what the image must not carry
removed. Commands run inside it in a private mount namespace, so nothing stays mounted
however they end, and in their own process group, killed with the caller."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from varmor import __version__

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "apparmor", "ca-certificates")
#: Only needed to create the venv: purged once it exists.
VENV_ONLY_PACKAGES = (
    "python3-venv",
    "python3.11-venv",
    "python3-distutils",
    "python3-lib2to3",
    "python3-pip-whl",
    "python3-setuptools-whl",
)
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
#: bookworm's python3: what the dependency wheels are chosen for.
PYTHON_VERSION = "3.11"
VENV = "/opt/varmor"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER = 65532
USER_NAME = "nonroot"
HOME = "/home/nonroot"
SETUP_HINT = "run `make setup` (installs mmdebstrap)"
_CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(RuntimeError):
    """The image cannot be built here, or a step failed; the message says which and why."""


def _run(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in its own process group; the whole group is killed if this is
    interrupted or times out, so no build step outlives its caller."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def run_checked(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    result = _run(argv, timeout=timeout, env=env)
    if result.returncode != 0:
        output = (result.stderr or result.stdout)[-3000:]
        raise ImageError(f"{' '.join(argv[:4])} failed ({result.returncode}):\n{output}")
    return result.stdout


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ImageError(f"{tool} is not installed: {SETUP_HINT}")
    return path


# With the mounts in a mount namespace of its own, nothing stays mounted when the command
# ends, however it ends.
_IN_ROOT = (
    'root=$1; shift; mount -t proc proc "$root/proc" && mount --bind /dev/null "$root/dev/null" && exec chroot "$@"'
)


def run_in_root(
    root: Path,
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """`argv` inside the root file system `root` (chroot, as `user` "uid:gid" if given),
    with /proc and /dev/null mounted for it in a private mount namespace, and only the
    environment `env` (default: PATH only)."""
    if os.geteuid() != 0:
        raise ImageError("running inside the image's file system needs root (chroot, mount)")
    for tool in ("unshare", "chroot", "mount"):
        need(tool)
    (root / "proc").mkdir(exist_ok=True)
    null = root / "dev" / "null"
    if not null.exists():
        null.parent.mkdir(exist_ok=True)
        null.touch()
    variables = env if env is not None else {"PATH": PATH}
    namespace = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_ROOT, "sh", str(root)]
    chroot = [*([f"--userspec={user}"] if user else []), str(root)]
    command = ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), *argv]
    return _run([*namespace, *chroot, *command], timeout=timeout, input=input)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def remove_tree(path: Path) -> None:
    """Remove a build directory, refusing if anything is still mounted inside it."""
    if not path.exists():
        return
    left = mounts_under(path)
    if left:
        raise ImageError(f"still mounted under {path}, not removing it: {', '.join(left)}")
    shutil.rmtree(path)


def build_root(root: Path, epoch: int) -> None:
    """Debian's essential packages plus DEBIAN_PACKAGES, in a mount namespace of its own."""
    need("mmdebstrap")
    need("unshare")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run_checked(["unshare", "--mount", "--propagation", "private",
            "mmdebstrap", "--quiet", "--mode=root", "--variant=essential", "--format=directory",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",  # else apt pulls in usrmerge and perl
            "--aptopt=Acquire::Check-Valid-Until \"false\"",  # a frozen or snapshot archive
            *(f"--dpkgopt={line}" for line in DPKG_EXCLUDES),
            f"--include={','.join(DEBIAN_PACKAGES)}", DEBIAN_SUITE, str(root)], timeout=1200, env=env)  # fmt: skip
    if not (root / f"usr/bin/python{PYTHON_VERSION}").exists():
        raise ImageError(f"{DEBIAN_SUITE}'s python3 is not {PYTHON_VERSION}: update PYTHON_VERSION and the constraints")


def install_venv(root: Path, wheels: Sequence[Path], epoch: int) -> None:
    """The venv at VENV with varmor from the wheels, no index; then no pip, no setuptools,
    nothing that only made the venv."""
    staged = root / "tmp" / "wheels"
    staged.mkdir(parents=True)
    for wheel in wheels:
        shutil.copyfile(wheel, staged / wheel.name)
    env = {
        "PATH": _CHROOT_PATH,
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),  # checked-hash .pyc, no timestamps
        "PYTHONHASHSEED": "0",  # the order of set constants in the bytecode
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }

    def inside(*argv: str) -> None:
        result = run_in_root(root, argv, env=env, timeout=900)
        if result.returncode != 0:
            output = (result.stderr or result.stdout)[-3000:]
            raise ImageError(f"{' '.join(argv[:4])} failed in the image ({result.returncode}):\n{output}")

    inside("python3", "-m", "venv", VENV)
    pip = f"{VENV}/bin/pip"
    inside(pip, "install", "--quiet", "--no-index", "--find-links", "/tmp/wheels", f"varmor=={__version__}")
    inside(pip, "uninstall", "--quiet", "--yes", "pip", "setuptools")
    inside("dpkg", "--purge", *VENV_ONLY_PACKAGES)
    shutil.rmtree(staged)


def finish_root(root: Path) -> None:
    """The image's user; no setuid or setgid file; nothing of the build host or of apt
    (the image has none), empty /dev, /proc, /sys, /run and /tmp."""
    with (root / "etc/passwd").open("a") as f:
        f.write(f"{USER_NAME}:x:{USER}:{USER}:{USER_NAME}:{HOME}:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as f:
        f.write(f"{USER_NAME}:x:{USER}:\n")
    home = root / HOME.lstrip("/")
    home.mkdir(mode=0o700, parents=True)
    os.chown(home, USER, USER)
    build_host = ("etc/resolv.conf", "etc/hostname", "root/.cache")  # mmdebstrap copies the first two in
    apt = ("var/cache/apt", "var/lib/apt", "var/log/apt")
    # What the purge logged (with the time it ran), as mmdebstrap removes its own logs.
    logs = ("var/log/dpkg.log", "var/log/alternatives.log", "var/cache/ldconfig/aux-cache")
    for gone in (*build_host, *apt, *logs):
        path = root / gone
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for emptied in ("dev", "proc", "sys", "run", "tmp", "var/cache/debconf"):
        for child in (root / emptied).iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                path.chmod(stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
