"""OCI image archives written without a container engine: a layout (`oci-layout`,
`index.json`, `blobs/sha256/...`) in one tar, as `ctr images import` and `skopeo copy
oci-archive:` read it. Reproducible: entries sorted, fixed owners and mtimes, so the same
files give the same digest.

Two ways in, one layout writer: `image_archive` for small images held in memory (the node
layer's busybox images: uncompressed layers), and `write_layer_from_dir` +
`write_image_archive` for a root file system streamed to disk (varmor's own image: one
gzip layer, never the whole ~300 MB in memory).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
NAME_ANNOTATION = "io.containerd.image.name"  # what `ctr images import` names the image by
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20


class LayerError(ValueError):
    """A directory holds something a layer must not carry (a device node, a socket)."""


@dataclass
class Layer:
    """Files of one layer: path -> (content, mode), and path -> symlink target. Content is
    bytes, or a file on disk that is streamed into the tar (large blobs)."""

    files: dict[str, tuple[bytes | Path, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def write(self, fileobj: BinaryIO, mtime: int = 0) -> None:
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs = sorted({str(Path(p).parent) for p in (*self.files, *self.symlinks)} - {"."})
            for d in _with_parents(dirs):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                tar.addfile(info)
            entries: list[tuple[str, bytes | Path | None, int, str]] = [
                *((p, data, mode, "") for p, (data, mode) in self.files.items()),
                *((p, None, 0o777, target) for p, target in self.symlinks.items()),
            ]
            for path, data, mode, target in sorted(entries, key=lambda e: e[0]):
                info = tarfile.TarInfo(path)
                info.mode, info.mtime = mode, mtime
                if data is None:
                    info.type, info.linkname = tarfile.SYMTYPE, target
                    tar.addfile(info)
                elif isinstance(data, Path):
                    info.size = data.stat().st_size
                    with data.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    def tar(self, mtime: int = 0) -> bytes:
        out = io.BytesIO()
        self.write(out, mtime)
        return out.getvalue()


def _with_parents(dirs: Sequence[str]) -> list[str]:
    found: set[str] = set()
    for d in dirs:
        parts = Path(d).parts
        found.update(str(Path(*parts[: i + 1])) for i in range(len(parts)))
    return sorted(found)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class LayerBlob:
    """A layer written to disk: its blob, the blob's digest and size, and the digest and
    size of the uncompressed tar (`rootfs.diff_ids` names the tar, not the blob)."""

    path: Path
    digest: str
    size: int
    diff_id: str
    tar_size: int = 0
    media_type: str = LAYER_GZIP


class _Sink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what passes through on its way to `out` (tarfile asks `tell`)."""

    def __init__(self, out: _Sink) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under `root` as (relative path, lstat), depth first, each directory's
    entries sorted by name (as `tar --sort=name`)."""
    for name in sorted(os.listdir(root / rel)):
        path = f"{rel}/{name}" if rel else name
        st = (root / path).lstat()
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, path)


def write_layer_from_dir(root: Path, dest: Path, *, mtime: int, compresslevel: int = 6) -> LayerBlob:
    """`root` as one gzip layer at `dest`, streamed. Entries sorted; mtimes clamped to
    `mtime` as integers (a float mtime makes tarfile write a PAX header); owners numeric as
    they are on disk, no names (the image's /etc/passwd is what counts); hard links kept
    as links. Device nodes, fifos and sockets are refused: a layer carries files."""
    seen: dict[tuple[int, int], str] = {}
    with dest.open("wb") as raw:
        compressed = _HashingWriter(raw)
        # No file name and mtime 0 in the gzip header: the same tar gives the same bytes.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel, fileobj=compressed, mtime=0) as gz:
            plain = _HashingWriter(gz)
            with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel, st in _walk(root):
                    info = tarfile.TarInfo(rel)
                    info.mode = stat.S_IMODE(st.st_mode)
                    info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
                    info.mtime = min(int(st.st_mtime), mtime)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(root / rel)
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in seen:
                            info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                            tar.addfile(info)
                            continue
                        seen[key] = rel
                        info.size = st.st_size
                        with (root / rel).open("rb") as f:
                            tar.addfile(info, f)
                    else:
                        raise LayerError(f"{rel}: not a file, directory or symlink (mode {st.st_mode:o})")
    return LayerBlob(
        dest, "sha256:" + compressed.sha.hexdigest(), compressed.size, "sha256:" + plain.sha.hexdigest(), plain.size
    )


def _layout(
    name: str,
    layers: Sequence[tuple[Mapping[str, object], bytes | Path]],
    config: Mapping[str, object] | None,
    created: str | None,
) -> tuple[Layer, str]:
    """The layout's files (layer blobs as given, config, manifest, index) and the
    manifest's digest. `layers`: (descriptor with the diff_id under "diff_id", content)."""
    blobs: dict[str, bytes | Path] = {}
    refs = []
    for descriptor, content in layers:
        blobs[str(descriptor["digest"])] = content
        refs.append({k: v for k, v in descriptor.items() if k != "diff_id"})
    image_config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [d["diff_id"] for d, _ in layers]},
    }
    if created is not None:
        image_config["created"] = created
    config_data = json.dumps(image_config, sort_keys=True).encode()
    config_digest = _digest(config_data)
    blobs[config_digest] = config_data
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_data)},
        "layers": refs,
    }
    manifest_data = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _digest(manifest_data)
    blobs[manifest_digest] = manifest_data
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_data),
                "annotations": {NAME_ANNOTATION: name, REF_ANNOTATION: tag},
            }
        ],
    }
    files: dict[str, bytes | Path] = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        **{f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()},
    }
    return Layer(files={p: (data, 0o644) for p, data in files.items()}), manifest_digest


def image_archive(
    name: str, layers: Sequence[bytes], *, config: Mapping[str, object] | None = None, mtime: int = 0
) -> bytes:
    """One image named `name` (`registry/repo:tag`) from uncompressed layer tars."""
    described = [
        ({"mediaType": LAYER, "digest": d, "size": len(data), "diff_id": d}, data)
        for d, data in ((_digest(layer), layer) for layer in layers)
    ]
    layout, _ = _layout(name, described, config, None)
    return layout.tar(mtime)


def write_image_archive(
    out: Path,
    name: str,
    layers: Sequence[LayerBlob],
    *,
    config: Mapping[str, object] | None = None,
    mtime: int = 0,
    created: str | None = None,
) -> str:
    """One image named `name` from layers already on disk, written to `out` without
    holding them in memory. Returns the manifest's digest (what a registry names)."""
    described = [
        ({"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id}, blob.path)
        for blob in layers
    ]
    layout, manifest_digest = _layout(name, described, config, created)
    with out.open("wb") as f:
        layout.write(f, mtime)
    return manifest_digest
