"""OCI image archives written without a container engine: a layout (`oci-layout`,
`index.json`, `blobs/sha256/...`) in one tar, as `ctr images import` and `skopeo copy
oci-archive:` read it. Reproducible: entries sorted, fixed owners and mtimes, so the same
files give the same digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass
class Layer:
    """Files of one layer: path -> (bytes, mode), and path -> symlink target."""

    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)

    def tar(self, mtime: int = 0) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            dirs = sorted({str(Path(p).parent) for p in (*self.files, *self.symlinks)} - {"."})
            for d in _with_parents(dirs):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                tar.addfile(info)
            entries: list[tuple[str, bytes | None, int, str]] = [
                *((p, data, mode, "") for p, (data, mode) in self.files.items()),
                *((p, None, 0o777, target) for p, target in self.symlinks.items()),
            ]
            for path, data, mode, target in sorted(entries):
                info = tarfile.TarInfo(path)
                info.mode, info.mtime = mode, mtime
                if data is None:
                    info.type, info.linkname = tarfile.SYMTYPE, target
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def _with_parents(dirs: Sequence[str]) -> list[str]:
    found: set[str] = set()
    for d in dirs:
        parts = Path(d).parts
        found.update(str(Path(*parts[: i + 1])) for i in range(len(parts)))
    return sorted(found)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def image_archive(
    name: str, layers: Sequence[bytes], *, config: Mapping[str, object] | None = None, mtime: int = 0
) -> bytes:
    """One image named `name` (`registry/repo:tag`) from uncompressed layer tars."""
    blobs: dict[str, bytes] = {}
    layer_refs = []
    for layer in layers:
        digest, data = _blob(layer)
        blobs[digest] = data
        layer_refs.append({"mediaType": LAYER, "digest": digest, "size": len(data)})
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [ref["digest"] for ref in layer_refs]},
    }
    config_digest, config_data = _blob(json.dumps(image_config, sort_keys=True).encode())
    blobs[config_digest] = config_data
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_data)},
        "layers": layer_refs,
    }
    manifest_digest, manifest_data = _blob(json.dumps(manifest, sort_keys=True).encode())
    blobs[manifest_digest] = manifest_data
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_data),
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        **{f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()},
    }
    return Layer(files={p: (data, 0o644) for p, data in files.items()}).tar(mtime)
