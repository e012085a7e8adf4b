"""The layer writer (`oci.write_layer_from_dir`) on small trees: what makes the image's
layer the same bytes from the same files."""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from varmor.dev import oci

pytestmark = pytest.mark.image

EPOCH = 1_700_000_000


def _tree(root: Path, mtime: float) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"\x7fELF tool")
    (root / "bin/tool").chmod(0o755)
    os.link(root / "bin/tool", root / "bin/same-tool")
    (root / "bin/sh").symlink_to("tool")
    for path in (root / "bin/sh", *sorted(root.rglob("*"), reverse=True), root):
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    return root


def test_the_same_files_give_the_same_bytes_whenever_written(tmp_path: Path) -> None:
    """mtimes after SOURCE_DATE_EPOCH (a build's own files) are clamped to it, as integers."""
    first = oci.write_layer_from_dir(_tree(tmp_path / "a", EPOCH + 12345.678), tmp_path / "a.tgz", mtime=EPOCH)
    second = oci.write_layer_from_dir(_tree(tmp_path / "b", EPOCH + 99.5), tmp_path / "b.tgz", mtime=EPOCH)
    assert (tmp_path / "a.tgz").read_bytes() == (tmp_path / "b.tgz").read_bytes()
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    assert first.digest == "sha256:" + hashlib.sha256((tmp_path / "a.tgz").read_bytes()).hexdigest()
    tar_bytes = gzip.decompress((tmp_path / "a.tgz").read_bytes())
    assert first.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert first.tar_size == len(tar_bytes)
    with tarfile.open(tmp_path / "a.tgz") as tar:
        members = {m.name: m for m in tar}
    assert list(members) == ["bin", "bin/same-tool", "bin/sh", "bin/tool", "etc", "etc/passwd"]
    assert {m.mtime for m in members.values()} == {EPOCH}
    assert all(not m.pax_headers and (m.uname, m.gname) == ("", "") for m in members.values())
    assert members["bin/tool"].type == tarfile.LNKTYPE  # the second name of the same inode
    assert members["bin/tool"].linkname == "bin/same-tool"
    assert (members["bin/sh"].type, members["bin/sh"].linkname) == (tarfile.SYMTYPE, "tool")


def test_older_mtimes_are_kept(tmp_path: Path) -> None:
    """Debian's files keep their own (older) mtimes: the stdlib's timestamped .pyc stay valid."""
    oci.write_layer_from_dir(_tree(tmp_path / "a", EPOCH - 86400), tmp_path / "a.tgz", mtime=EPOCH)
    with tarfile.open(tmp_path / "a.tgz") as tar:
        assert {m.mtime for m in tar} == {EPOCH - 86400}


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "a", EPOCH)
    os.mkfifo(root / "etc/pipe")
    with pytest.raises(oci.LayerError, match="etc/pipe"):
        oci.write_layer_from_dir(root, tmp_path / "a.tgz", mtime=EPOCH)
