"""The image layer: varmor's OCI image as `make image` builds it (varmor/dev/image.py),
checked without a container engine. The archive is read and its digests verified here,
its layer unpacked with tarfile, and commands run in the unpacked file system with chroot
as the image's user, with only PATH in the environment.

Two builds per test run: the normal one (from the cache when `make image` already built
these inputs) and a cold one with the cache off, for the reproducibility test."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from varmor.dev import image, rootfs
from varmor.dev.image import ImageBuild, ImageError

_TIMINGS: list[str] = []
RunAs = Callable[..., Any]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the image costs (bench/RESULTS.md quotes these)."""
    if _TIMINGS:
        terminalreporter.section("image build")
        for line in _TIMINGS:
            terminalreporter.write_line(line)


def _build(out: Path, *, cache: bool) -> ImageBuild:
    steps: list[str] = []
    try:
        built = image.build_image(out, cache=cache, log=steps.append)
    except ImageError as exc:
        pytest.fail(f"the image did not build: {exc}", pytrace=False)
    what = "cold (cache off)" if not cache else "from the cache" if built.cached else "warm path, built (cache empty)"
    _TIMINGS.append(f"{what}: {built.seconds:.1f} s, {built.size / 1e6:.1f} MB, {built.digest}")
    _TIMINGS.extend(f"  {line.removeprefix('image: ')}" for line in steps)
    return built


@contextlib.contextmanager
def _scratch(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A directory for the whole run, removed at its end (an unpacked image is ~300 MB;
    pytest would keep three runs' worth)."""
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def image_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageBuild]:
    """What `make image` gives: the cached path."""
    with _scratch(tmp_path_factory, "warm") as work:
        yield _build(work / "varmor.oci.tar", cache=True)


@pytest.fixture(scope="session")
def cold_build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageBuild]:
    """Every step run again, nothing read from or written to the cache."""
    with _scratch(tmp_path_factory, "cold") as work:
        yield _build(work / "varmor.oci.tar", cache=False)


@dataclass(frozen=True)
class Unpacked:
    """An image archive read back: its layout, every blob checked against its digest, and
    the layer's file system unpacked at `root`."""

    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[tarfile.TarInfo]
    root: Path

    def env(self) -> dict[str, str]:
        """The image's environment (its config `Env`), nothing else."""
        return dict(item.split("=", 1) for item in self.config["config"]["Env"])


def _sha256(path: Path, *, gunzip: bool = False) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") if gunzip else path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(layout: Path, descriptor: dict[str, Any]) -> Path:
    path = layout / "blobs" / "sha256" / descriptor["digest"].removeprefix("sha256:")
    assert path.stat().st_size == descriptor["size"], f"{descriptor['digest']}: size differs from its descriptor"
    assert _sha256(path) == descriptor["digest"], f"{path.name}: content does not match its digest"
    return path


def read_archive(archive: Path, dest: Path) -> Unpacked:
    """Unpack `archive` (an OCI layout in a tar) under `dest`, checking every digest: the
    manifest, the config and each compressed layer by their descriptors, each layer's
    uncompressed tar by the config's `rootfs.diff_ids`."""
    layout = dest / "layout"
    with tarfile.open(archive) as outer:
        outer.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    manifest = json.loads(_blob(layout, descriptor).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]).read_bytes())
    root = dest / "root"
    root.mkdir()
    members: list[tarfile.TarInfo] = []
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        blob = _blob(layout, layer)
        assert _sha256(blob, gunzip=True) == diff_id, "the uncompressed layer does not match rootfs.diff_ids"
        with tarfile.open(blob, "r:gz") as tar:
            layer_members = tar.getmembers()
            for m in layer_members:
                assert not m.name.startswith("/"), f"absolute member {m.name}"
                assert ".." not in Path(m.name).parts, f"member outside the root {m.name}"
            # Exactly as a runtime unpacks it: owners, modes (the sticky /tmp) and links kept.
            tar.extractall(root, numeric_owner=True, filter="fully_trusted")
        members.extend(layer_members)
    return Unpacked(index, manifest, config, members, root)


@pytest.fixture(scope="session")
def unpacked(image_build: ImageBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    with _scratch(tmp_path_factory, "image") as work:
        yield read_archive(image_build.path, work)


@pytest.fixture(scope="session")
def run_as(unpacked: Unpacked) -> RunAs:
    """Run a command in the image's file system as `user` (default the image's), with the
    image's PATH and nothing else: no HOME, no KUBECONFIG."""

    def run(argv: list[str], *, user: str | None = None, stdin: str | None = None) -> Any:
        try:
            return rootfs.run_in_root(
                unpacked.root, argv, user=user or unpacked.config["config"]["User"], env=unpacked.env(), input=stdin
            )
        except ImageError as exc:
            pytest.fail(str(exc), pytrace=False)

    return run
