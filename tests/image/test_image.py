"""varmor's image as `make image` builds it: reproducible, named as the chart runs it,
starting as its user with no home, compiling profiles with its own parser, and carrying
no compiler, no pip and no credentials."""

from __future__ import annotations

import datetime as dt
import filecmp
import re
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.image.conftest import RunAs, Unpacked
from varmor import __version__
from varmor.dev.image import ImageBuild
from varmor.dev.paths import REPO_ROOT
from varmor.dev.secretscan import find_secrets

pytestmark = pytest.mark.image

VENV = "opt/varmor"
USER = "65532:65532"


def _epoch(unpacked: Unpacked) -> int:
    created = dt.datetime.strptime(unpacked.config["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return int(created.timestamp())


def _member(unpacked: Unpacked, name: str) -> tarfile.TarInfo:
    (member,) = [m for m in unpacked.layers if m.name == name]
    return member


# -- the archive -----------------------------------------------------------------------------


def test_a_cold_build_and_the_cached_build_are_the_same_bytes(image_build: ImageBuild, cold_build: ImageBuild) -> None:
    """Every step run again (new work directory, no cache) gives the archive `make image`
    gives, byte for byte: the digest depends on the inputs only."""
    assert not cold_build.cached
    assert cold_build.path != image_build.path
    assert cold_build.inputs == image_build.inputs, "the sources changed between the two builds"
    assert cold_build.digest == image_build.digest
    assert filecmp.cmp(cold_build.path, image_build.path, shallow=False)


def test_the_archive_is_named_as_the_chart_runs_it(image_build: ImageBuild, unpacked: Unpacked) -> None:
    """The chart's default image (values.yaml `image.repository`, the tag defaulting to
    the chart's appVersion) is this archive's name, so `ctr images import` of it is all a
    node needs."""
    values = yaml.safe_load((REPO_ROOT / "chart/values.yaml").read_text())
    chart = yaml.safe_load((REPO_ROOT / "chart/Chart.yaml").read_text())
    tag = values["image"]["tag"] or chart["appVersion"]
    assert tag == __version__
    (descriptor,) = unpacked.index["manifests"]
    assert descriptor["annotations"] == {
        "io.containerd.image.name": f"{values['image']['repository']}:{tag}",
        "org.opencontainers.image.ref.name": tag,
    }
    assert descriptor["digest"] == image_build.digest


def test_the_config_runs_varmor_as_its_user(unpacked: Unpacked) -> None:
    config = unpacked.config
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["User"] == USER
    assert config["config"]["Entrypoint"] == ["varmor"]
    assert config["config"]["Cmd"] == ["run"]
    assert unpacked.env()["PATH"].split(":")[0] == f"/{VENV}/bin"
    assert (unpacked.root / VENV / "bin/varmor").is_file()
    assert unpacked.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


# -- running it --------------------------------------------------------------------------------


def test_varmor_starts_as_the_image_user_with_no_home_in_its_environment(run_as: RunAs) -> None:
    help_ = run_as(["varmor", "--help"])
    assert help_.returncode == 0, help_.stderr
    assert "run" in help_.stdout
    version = run_as(["varmor", "version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == __version__


def test_varmor_starts_as_a_uid_the_image_does_not_know(run_as: RunAs) -> None:
    """A pod's runAsUser may be any uid: with no passwd entry and no HOME, the Kubernetes
    client's import must not stop varmor."""
    result = run_as(["varmor", "--help"], user="4242:4242")
    assert result.returncode == 0, result.stderr


def test_the_user_has_a_home_and_owns_nothing_else(unpacked: Unpacked) -> None:
    passwd = (unpacked.root / "etc/passwd").read_text().splitlines()
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin" in passwd
    assert "nonroot:x:65532:" in (unpacked.root / "etc/group").read_text().splitlines()
    owned = [m.name for m in unpacked.layers if m.uid == 65532 or m.gid == 65532]
    assert owned == ["home/nonroot"]
    assert _member(unpacked, "home/nonroot").isdir()


def test_nothing_is_compiled_when_varmor_starts(run_as: RunAs) -> None:
    """Every module varmor imports comes from bytecode in the image: a read-only root file
    system (the chart's) never pays a compile at start."""
    script = "import sys; from varmor.cli import main; sys.argv = ['varmor', '--help']; main()"
    result = run_as(["python3", "-v", "-c", script])
    loaded = [line for line in result.stderr.splitlines() if line.startswith("# code object from")]
    assert len(loaded) > 200, result.stderr[-2000:]
    assert [line for line in loaded if not line.rstrip().endswith(".pyc'")] == []


def test_the_venvs_bytecode_is_checked_by_hash(unpacked: Unpacked) -> None:
    """Hash-checked .pyc (PEP 552, flags 0b11): no source mtime in them, valid however
    the layer's mtimes are clamped."""
    pycs = sorted((unpacked.root / VENV).rglob("*.pyc"))
    assert len(pycs) > 1000
    flags = {int.from_bytes(p.read_bytes()[4:8], "little") for p in pycs}
    assert flags == {0b11}


def test_the_images_parser_compiles_a_catalog_profile_with_the_pinned_features(run_as: RunAs) -> None:
    policy = (REPO_ROOT / "examples/demo-policy.yaml").read_text()
    result = run_as(["varmor", "profile", "render", "--check", "-"], stdin=policy)
    assert result.returncode == 0, result.stderr
    assert "profile varmor-demo-web " in result.stdout


def test_the_images_parser_rejects_a_broken_profile(run_as: RunAs) -> None:
    script = (
        "from varmor.parser import compile_check\n"
        "r = compile_check({'varmor-x': 'profile varmor-x {\\n  /etc/passwd rwz,\\n}\\n'})['varmor-x']\n"
        "print(r.ok, r.reason)\n"
        "print(r.message)\n"
    )
    result = run_as(["python3", "-c", script])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False Invalid\n"), result.stdout


# -- what it does not carry ----------------------------------------------------------------------

_COMPILER = re.compile(
    r"(?:[a-z0-9_]+-linux-gnu-)?(?:gcc|g\+\+|cc|c\+\+|cpp|clang|clang\+\+|tcc|ld|ld\.bfd|ld\.gold|as)(?:-[0-9.]+)?"
)


def test_no_compiler(unpacked: Unpacked) -> None:
    names = [m.name for m in unpacked.layers]
    assert [n for n in names if "/bin/" in f"/{n}" and _COMPILER.fullmatch(Path(n).name)] == []
    assert [n for n in names if n.startswith(("usr/lib/gcc/", "usr/libexec/gcc/"))] == []


def test_no_pip_and_no_pip_cache(unpacked: Unpacked) -> None:
    names = [m.name for m in unpacked.layers]
    site = f"{VENV}/lib/python3.11/site-packages/"
    assert [n for n in names if n.startswith(f"{VENV}/bin/pip")] == []
    assert [n for n in names if n.startswith(tuple(site + p for p in ("pip", "setuptools", "_distutils_hack")))] == []
    assert [n for n in names if n.endswith(".whl") or "/.cache/" in f"/{n}/"] == []
    assert [n for n in names if n.startswith("usr/share/python-wheels")] == []
    assert list((unpacked.root / "home/nonroot").iterdir()) == []


def test_no_credentials(unpacked: Unpacked) -> None:
    assert find_secrets(unpacked.root) == []


def test_nothing_of_the_build_host(unpacked: Unpacked) -> None:
    names = {m.name for m in unpacked.layers}
    assert not names & {"etc/resolv.conf", "etc/hostname", "var/lib/apt", "var/cache/apt", "var/log/dpkg.log"}
    for emptied in ("dev", "proc", "sys", "run", "tmp", "var/cache/debconf"):
        assert _member(unpacked, emptied).isdir()
        assert [n for n in names if n.startswith(f"{emptied}/")] == [], emptied
    assert stat.S_IMODE(_member(unpacked, "tmp").mode) == 0o1777


def test_layer_entries_are_plain_and_fixed(unpacked: Unpacked) -> None:
    """Files, directories and links only; no setuid or setgid file; numeric owners; no
    mtime after SOURCE_DATE_EPOCH; no file anyone may write; world-writable directories
    are sticky."""
    epoch = _epoch(unpacked)
    odd: list[tuple[str, Any]] = []
    for m in unpacked.layers:
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            odd.append((m.name, "type"))
        if m.isfile() and m.mode & (stat.S_ISUID | stat.S_ISGID):
            odd.append((m.name, "setuid/setgid"))
        if m.uname or m.gname or m.mtime > epoch or not isinstance(m.mtime, int):
            odd.append((m.name, (m.uname, m.gname, m.mtime)))
        if m.isfile() and m.mode & stat.S_IWOTH:
            odd.append((m.name, "world-writable"))
        if m.isdir() and m.mode & stat.S_IWOTH and not m.mode & stat.S_ISVTX:
            odd.append((m.name, "world-writable, not sticky"))
    assert odd == []
