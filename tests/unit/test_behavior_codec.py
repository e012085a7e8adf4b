"""The model's storage in ArmorProfileModel/ArmorBehavior objects: both storage types round
trip, the typed schema accepts what is written, and a corrupt object fails clearly."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import msgspec
import pytest

from varmor.behavior import codec
from varmor.behavior.codec import decode_model_data, encode_model_data
from varmor.behavior.model import (
    Behavior,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
    SignalRule,
    WireError,
)
from varmor.models import ArmorBehavior, ArmorProfileModel


def sample(files: int = 3) -> Behavior:
    behavior = Behavior()
    for rule in (
        ExecRule("/usr/sbin/nginx"),
        CapabilityRule("net_bind_service"),
        NetworkRule("inet", "stream", "6"),
        SignalRule("receive", "term", "unconfined"),
        PtraceRule("read", "@{profile_name}"),
        MountRule("mount", "tmpfs", "tmpfs", "/cache/", "rw,nosuid"),
        *(FileRule(f"/srv/data/file-{i:06d}.json", "rw", owner=bool(i % 2)) for i in range(files)),
    ):
        behavior.add(rule, 2)
    return behavior


def model_object(storage: str, data: dict[str, Any], **status: int) -> dict[str, Any]:
    return {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "ArmorProfileModel",
        "metadata": {"name": "varmor-demo-web", "namespace": "demo"},
        "storageType": storage,
        "data": data,
        "status": status,
    }


@pytest.mark.parametrize(
    ("compress_over", "storage"), [(codec.COMPRESS_OVER, "CRDInternal"), (0, "CRDInternalCompressed")]
)
def test_both_storage_types_round_trip(compress_over: int, storage: str) -> None:
    behavior = sample()
    stored, data = encode_model_data(behavior, compress_over=compress_over)
    assert stored == storage
    obj = model_object(stored, data, lostRecords=3, excludedRecords=4)
    msgspec.convert(obj, ArmorProfileModel)  # the CRD's schema takes it
    back = decode_model_data(obj)
    assert back.rules == behavior.rules
    assert (back.records, back.lost, back.excluded) == (behavior.records, 3, 4)


def test_the_rules_are_compressed_only_past_the_threshold() -> None:
    small, big = sample(3), sample(8000)
    assert encode_model_data(small)[0] == "CRDInternal"
    assert len(codec.model_json(big)) > codec.COMPRESS_OVER
    stored, data = encode_model_data(big)
    assert stored == "CRDInternalCompressed"
    assert len(data["compressed"]) < codec.COMPRESS_OVER / 4  # paths like these compress well
    assert decode_model_data(model_object(stored, data)).rules == big.rules
    assert encode_model_data(big) == (stored, data)  # deterministic: no time in the gzip header


def test_compressed_is_base64_of_gzip_of_dynamic_results_json() -> None:
    """What the schema documents, readable by any gzip: so other tools can read it too."""
    _, data = encode_model_data(sample(), compress_over=0)
    dynamic = json.loads(gzip.decompress(base64.b64decode(data["compressed"])))
    assert dynamic == encode_model_data(sample())[1]["dynamicResult"]
    assert set(dynamic) == {"appArmor"}


def test_an_agents_share_decodes_too() -> None:
    stored, data = encode_model_data(sample())
    share = {
        "kind": "ArmorBehavior",
        "metadata": {"name": "varmor-demo-web.node-1", "namespace": "demo"},
        "spec": {"nodeName": "node-1", "profileName": "varmor-demo-web", "lostRecords": 7},
        "storageType": stored,
        "data": data,
    }
    msgspec.convert(share, ArmorBehavior)
    assert decode_model_data(share).lost == 7


def test_an_object_without_data_is_an_empty_model() -> None:
    for obj in ({}, {"storageType": "CRDInternal"}, {"data": {"dynamicResult": {}}}):
        assert len(decode_model_data(obj)) == 0


def _gzip(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw)).decode()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "the object must be an object"),
        ({"storageType": "LocalDisk"}, "storageType 'LocalDisk' is not one of"),
        ({"data": "x"}, "data must be an object"),
        ({"data": {"dynamicResult": []}}, "data.dynamicResult must be an object"),
        ({"data": {"dynamicResult": {"appArmor": {"bogus": []}}}}, "unknown behaviour list 'bogus'"),
        ({"data": {"dynamicResult": {"appArmor": {"files": [{"path": 1}]}}}}, "files[0].path has the wrong type"),
        ({"storageType": "CRDInternalCompressed", "data": {}}, "data.compressed must be a non-empty string"),
        ({"storageType": "CRDInternalCompressed", "data": {"compressed": "%%%"}}, "not base64"),
        ({"storageType": "CRDInternalCompressed", "data": {"compressed": "aGVsbG8="}}, "not gzip"),
        ({"storageType": "CRDInternalCompressed", "data": {"compressed": _gzip(b"{")}}, "does not hold JSON"),
        ({"storageType": "CRDInternalCompressed", "data": {"compressed": _gzip(b"[]")}}, "must be an object"),
        ({"status": {"lostRecords": -1}}, "status.lostRecords must be a non-negative integer"),
    ],
)
def test_a_corrupt_object_fails_naming_what_is_wrong(obj: Any, message: str) -> None:
    with pytest.raises(WireError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_model_data(obj)


def test_a_truncated_stream_fails() -> None:
    packed = base64.b64decode(encode_model_data(sample(), compress_over=0)[1]["compressed"])
    text = base64.b64encode(packed[: len(packed) // 2]).decode()
    with pytest.raises(WireError, match="truncated"):
        decode_model_data(model_object("CRDInternalCompressed", {"compressed": text}))


def test_decompression_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few KiB of zeros must not expand past the limit (here lowered to keep the test fast)."""
    monkeypatch.setattr(codec, "MAX_JSON", 1024)
    bomb = _gzip(b" " * 1_000_000)
    assert len(bomb) < 4096
    with pytest.raises(WireError, match="expands to more than 1024 bytes"):
        decode_model_data(model_object("CRDInternalCompressed", {"compressed": bomb}))
