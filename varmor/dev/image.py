"""`make image` (`varmor dev image`): varmor's OCI image, built with no container daemon and
no base image pulled, the same bytes every time from the same inputs.

- The root file system is Debian bookworm from mmdebstrap (the essential packages plus
  python3, apparmor and ca-certificates; no apt, no documentation but copyright files),
  the node layer's choices (tests/node/nodevm.py).
- varmor and every dependency are installed from wheels into a venv inside it, with no
  index: the varmor wheel is built here from the sources, the dependencies are PyPI's
  binary wheels for bookworm's Python and glibc at the versions `constraints/image.txt`
  pins. pip runs inside the root file system, so the bytecode it writes names real paths,
  and with SOURCE_DATE_EPOCH set it writes checked-hash .pyc: no timestamps, and a
  read-only root file system never needs a recompile. pip, setuptools and what only made
  the venv are then removed.
- The image runs as `nonroot` (65532:65532, home /home/nonroot); no setuid or setgid
  file; nothing of the build host (resolv.conf, hostname, caches, device nodes).
- One gzip layer, written by `varmor.dev.oci`: entries sorted, mtimes clamped to
  SOURCE_DATE_EPOCH, numeric owners. SOURCE_DATE_EPOCH is the time of the last commit that
  changed the image's inputs, so a commit that touches only docs keeps the digest.

The same inputs give the same digest: the inputs' contents, the Debian archive's state
(Debian's packages are not pinned; a snapshot mirror pins them), and zlib's version.
Builds are cached by a hash of the inputs in `${VARMOR_CACHE:-~/.cache/varmor}/image/`.

This module: the inputs, the wheels, the cache and the command. The root file system is
`rootfs.py`, the secret scan `secretscan.py`, the archive `oci.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from varmor import __version__
from varmor.dev import oci, rootfs
from varmor.dev.paths import REPO_ROOT, cache_dir
from varmor.dev.rootfs import ImageError
from varmor.dev.secretscan import find_secrets

__all__ = ["ImageBuild", "ImageError", "build_image", "default_output", "image_name"]

#: Bump when the image changes in a way its inputs do not show.
IMAGE_FORMAT = 1
#: chart/values.yaml `image.repository`; the tag is the version (the chart's appVersion),
#: so the chart runs the archive as it is.
REPOSITORY = "ghcr.io/varmor/varmor"
#: The manylinux tags bookworm's glibc (2.36) runs: what the dependency wheels are chosen
#: for (with its Python), whatever Python and glibc build the image.
WHEEL_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)), "manylinux2014_x86_64")
CONSTRAINTS = REPO_ROOT / "constraints" / "image.txt"


@dataclass(frozen=True)
class ImageBuild:
    """An image archive: where it is, what it is called, its manifest digest (what a
    registry and containerd name it by) and size; `cached` when no step ran."""

    path: Path
    name: str
    digest: str
    size: int
    cached: bool
    seconds: float
    inputs: str  # the hash of the inputs it was built from (its cache key)


def image_name(version: str = __version__) -> str:
    return f"{REPOSITORY}:{version}"


def default_output(version: str = __version__) -> Path:
    return REPO_ROOT / "dist" / f"varmor-{version}.oci.tar"


# -- inputs ---------------------------------------------------------------------------


def input_files(base: Path = REPO_ROOT) -> list[Path]:
    """What the image is made from under `base`: what goes into the varmor wheel
    (pyproject.toml and the package, no bytecode; this module included) and the
    constraints."""
    files = [base / "pyproject.toml", base / CONSTRAINTS.relative_to(REPO_ROOT)]
    for dirpath, dirnames, filenames in os.walk(base / "varmor"):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return files


def snapshot_inputs(dest: Path) -> Path:
    """A copy of the inputs at `dest`: the build reads only this, so the cache key names
    exactly what was built even while the working tree changes."""
    for path in input_files():
        target = dest / path.relative_to(REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH if set; else the time of the last commit that changed the
    image's inputs; outside git, the newest input's mtime."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%ct", "--", "pyproject.toml", "varmor",
             str(CONSTRAINTS.relative_to(REPO_ROOT))],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        if out:
            return int(out)
    return max(int(p.stat().st_mtime) for p in input_files())


def input_key(snapshot: Path, epoch: int) -> str:
    """A hash of everything the image is made from: the inputs (a snapshot), the Debian
    package list and the timestamp."""
    h = hashlib.sha256()
    debian = (rootfs.DEBIAN_SUITE, *rootfs.DEBIAN_PACKAGES, *rootfs.VENV_ONLY_PACKAGES, *rootfs.DPKG_EXCLUDES)
    for part in (str(IMAGE_FORMAT), str(epoch), *debian):
        h.update(part.encode() + b"\0")
    for path in input_files(snapshot):
        h.update(path.relative_to(snapshot).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:24]


def pinned(constraints: Path = CONSTRAINTS) -> dict[str, str]:
    """A constraints file as {normalized name: version}."""
    pins: dict[str, str] = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalize(name)] = version.strip()
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- the wheels ---------------------------------------------------------------------------


def build_wheels(dest: Path, src: Path, epoch: int) -> list[Path]:
    """The varmor wheel (built from the snapshot `src`) and every dependency's wheel, as
    its constraints/image.txt pins them, for bookworm's Python and glibc."""
    constraints = src / CONSTRAINTS.relative_to(REPO_ROOT)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    python = rootfs.PYTHON_VERSION
    rootfs.run_checked([*pip, "wheel", "--quiet", "--no-deps", "--build-constraint", str(constraints),
                        "--wheel-dir", str(dest), str(src)], timeout=600, env=env)  # fmt: skip
    (wheel,) = dest.glob("varmor-*.whl")
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    rootfs.run_checked([*pip, "download", "--quiet", "--only-binary=:all:", "--python-version", python,
                        "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}", *platforms,
                        "--constraint", str(constraints), "--dest", str(dest), str(wheel)],
                       timeout=900, env=env)  # fmt: skip
    wheels = sorted(dest.glob("*.whl"))
    pins = pinned(constraints)
    for path in wheels:
        name, version = path.name.split("-")[:2]
        if name != "varmor" and pins.get(_normalize(name)) != version:
            where = CONSTRAINTS.relative_to(REPO_ROOT)
            raise ImageError(f"{path.name} is not pinned in {where}: add `{name}=={version}`")
    return wheels


# -- the build ---------------------------------------------------------------------------


def image_config(epoch: int) -> tuple[dict[str, object], str]:
    """The image's runtime configuration and its `created` time (SOURCE_DATE_EPOCH)."""
    config: dict[str, object] = {
        "User": f"{rootfs.USER}:{rootfs.USER}",
        "Entrypoint": ["varmor"],
        "Cmd": ["run"],
        "Env": [f"PATH={rootfs.PATH}"],
        "WorkingDir": "/",
        "Labels": {"org.opencontainers.image.title": "varmor", "org.opencontainers.image.version": __version__},
    }
    created = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return config, created


def _build(out: Path, work: Path, epoch: int, log: Callable[[str], None]) -> str:
    """Every step from the snapshot in `work`; returns the manifest digest."""
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (mmdebstrap --mode=root, chroot)")
    root = work / "root"

    @contextlib.contextmanager
    def step(what: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        log(f"image: {what} {time.monotonic() - start:.1f} s")

    try:
        with step("wheels (varmor built, dependencies downloaded)"):
            wheels = build_wheels(work / "wheels", work / "src", epoch)
        with step(f"root file system (mmdebstrap {rootfs.DEBIAN_SUITE})"):
            rootfs.build_root(root, epoch)
        with step("venv (pip install --no-index inside the root)"):
            rootfs.install_venv(root, wheels, epoch)
        with step("user, cleanup, secret scan"):
            rootfs.finish_root(root)
            secrets = find_secrets(root)
            if secrets:
                named = ", ".join(f"{s.path} ({s.kind})" for s in secrets)
                raise ImageError(f"the image would carry credentials: {named}")
        with step("layer (tar, gzip)"):
            layer = oci.write_layer_from_dir(root, work / "layer.tar.gz", mtime=epoch)
            log(f"image: layer {layer.tar_size / 1e6:.1f} MB unpacked, {layer.size / 1e6:.1f} MB compressed")
        with step("archive"):
            config, created = image_config(epoch)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                digest = oci.write_image_archive(
                    tmp, image_name(), [layer], config=config, mtime=epoch, created=created
                )
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        return digest
    finally:
        rootfs.remove_tree(root)


def _cache_dir() -> Path:
    path = cache_dir() / "image"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def build_image(
    out: Path | None = None, *, cache: bool = True, log: Callable[[str], None] = print, keep: int = 3
) -> ImageBuild:
    """varmor's image as an OCI archive at `out` (default dist/varmor-<version>.oci.tar).
    With `cache`, a build of the same inputs is copied from the cache (and a new build is
    kept there, with the `keep` most recent others); without, every step runs and the
    cache is neither read nor written."""
    start = time.monotonic()
    out = out or default_output()
    out.parent.mkdir(parents=True, exist_ok=True)
    epoch = source_date_epoch()
    work = Path(tempfile.mkdtemp(prefix="varmor-image-"))
    try:
        key = input_key(snapshot_inputs(work / "src"), epoch)
        log(f"image: {image_name()} from inputs {key}, SOURCE_DATE_EPOCH={epoch}")
        if not cache:
            digest = _build(out, work, epoch, log)
            return ImageBuild(out, image_name(), digest, out.stat().st_size, False, time.monotonic() - start, key)
        store = _cache_dir()
        archive, meta = store / f"{key}.oci.tar", store / f"{key}.json"
        with (store / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same inputs waits, then copies
            cached = archive.exists() and meta.exists()
            if cached:
                meta.touch()
            else:
                digest = _build(archive, work, epoch, log)
                meta.write_text(json.dumps({"digest": digest, "name": image_name(), "epoch": epoch}))
                for old in sorted(store.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[keep + 1 :]:
                    old.with_suffix(".oci.tar").unlink(missing_ok=True)
                    old.unlink()
            digest = json.loads(meta.read_text())["digest"]
            _copy(archive, out)
        return ImageBuild(out, image_name(), digest, out.stat().st_size, cached, time.monotonic() - start, key)
    finally:
        rootfs.remove_tree(work)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="varmor dev image", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="the archive (default dist/varmor-<version>.oci.tar)")
    parser.add_argument("--no-cache", action="store_true", help="run every step; neither read nor write the cache")


def run(args: argparse.Namespace) -> int:
    try:
        built = build_image(args.out, cache=not args.no_cache)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    how = "from the cache" if built.cached else "built"
    print(f"image: {built.name} {how} in {built.seconds:.1f} s")
    print(f"image: {built.path} ({built.size / 1e6:.1f} MB) {built.digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
