"""The `storageType`/`data` of ArmorProfileModel and ArmorBehavior objects (pure).

A model is stored in the object itself: as its rules (`CRDInternal`,
`data.dynamicResult.appArmor` in `model.to_wire` form), or, once that JSON is larger than
`compress_over` bytes, as base64 of gzip of `dynamicResult`'s JSON at `data.compressed`
(`CRDInternalCompressed`; see `varmor.models.behavior`). The object is read back from the
API or from a file a user passes, so every step checks its input and fails with
`WireError` naming what is wrong; decompression is bounded (a small hostile blob must not
expand into gigabytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from typing import Any

from varmor.behavior.model import Behavior, WireError, from_wire, to_wire

CRD_INTERNAL = "CRDInternal"
CRD_INTERNAL_COMPRESSED = "CRDInternalCompressed"
STORAGE_TYPES = (CRD_INTERNAL, CRD_INTERNAL_COMPRESSED)
COMPRESS_OVER = 512 * 1024  # bytes of JSON; an object must stay well under etcd's 1.5 MiB
# What a compressed model or share may expand to. A stored model is at most 1 MiB
# compressed, and JSON of rules compresses about 8:1; more is a bomb, refused before it is
# parsed (a share is input from a node, and the leader decodes it).
MAX_JSON = 8 * 1024 * 1024
_GZIP = 31  # zlib's window bits for the gzip container


def model_json(behavior: Behavior) -> bytes:
    """`dynamicResult`'s JSON, compact and sorted (equal models, equal bytes)."""
    dynamic = {"appArmor": to_wire(behavior)}
    return json.dumps(dynamic, sort_keys=True, separators=(",", ":")).encode()


def encode_model_data(behavior: Behavior, *, compress_over: int = COMPRESS_OVER) -> tuple[str, dict[str, Any]]:
    """(storageType, data) for `behavior`: the rules themselves, or compressed when their
    JSON exceeds `compress_over` bytes. Deterministic: gzip's header carries no time."""
    text = model_json(behavior)
    if len(text) <= compress_over:
        return CRD_INTERNAL, {"dynamicResult": json.loads(text)}
    packer = zlib.compressobj(9, zlib.DEFLATED, _GZIP)
    packed = packer.compress(text) + packer.flush()
    return CRD_INTERNAL_COMPRESSED, {"compressed": base64.b64encode(packed).decode("ascii")}


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WireError(f"{where} must be an object")
    return value


def _inflate(text: Any) -> Mapping[str, Any]:
    if not isinstance(text, str) or not text:
        raise WireError("data.compressed must be a non-empty string")
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("data.compressed is not base64") from None
    unpacker = zlib.decompressobj(_GZIP)
    try:
        raw = unpacker.decompress(packed, MAX_JSON + 1)
    except zlib.error as exc:
        raise WireError(f"data.compressed is not gzip: {exc}") from None
    if len(raw) > MAX_JSON or unpacker.unconsumed_tail:
        raise WireError(f"data.compressed expands to more than {MAX_JSON} bytes")
    if not unpacker.eof:
        raise WireError("data.compressed is truncated")
    try:
        dynamic = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise WireError("data.compressed does not hold JSON") from None
    return _mapping(dynamic, "the decompressed dynamicResult")


def _count(obj: Mapping[str, Any], key: str) -> int:
    """A record count from `status` (ArmorProfileModel) or `spec` (ArmorBehavior)."""
    for part in ("status", "spec"):
        value = _mapping(obj.get(part), part).get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise WireError(f"{part}.{key} must be a non-negative integer")
        return value
    return 0


def decode_model_data(obj: Mapping[str, Any]) -> Behavior:
    """The behaviour in an ArmorProfileModel (or ArmorBehavior) object, with its lost and
    excluded record counts; WireError for an object varmor would not have written."""
    obj = _mapping(obj, "the object")
    storage = obj.get("storageType", CRD_INTERNAL)
    data = _mapping(obj.get("data"), "data")
    if storage == CRD_INTERNAL:
        dynamic = _mapping(data.get("dynamicResult"), "data.dynamicResult")
    elif storage == CRD_INTERNAL_COMPRESSED:
        dynamic = _inflate(data.get("compressed"))
    else:
        raise WireError(f"storageType {storage!r} is not one of {', '.join(STORAGE_TYPES)}")
    behavior = from_wire(_mapping(dynamic.get("appArmor"), "dynamicResult.appArmor"))
    behavior.lost = _count(obj, "lostRecords")
    behavior.excluded = _count(obj, "excludedRecords")
    return behavior
