"""AdmissionReview v1 on the wire: strict parsing and response encoding.

Anything not shaped like an admission.k8s.io/v1 AdmissionReview is a ReviewError,
which the server answers with 400 and the reason, never a 500.
"""

from __future__ import annotations

from binascii import b2a_base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

API_VERSION = "admission.k8s.io/v1"


class ReviewError(ValueError):
    pass


@dataclass(slots=True)
class AdmissionRequest:
    uid: str
    kind: str  # request.kind.kind
    group: str
    operation: str
    namespace: str
    name: str
    sub_resource: str
    obj: Mapping[str, Any] | None
    old_obj: Mapping[str, Any] | None
    dry_run: bool


def _str(req: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = req.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ReviewError(
            f"request.{key} must be a non-empty string" if required else f"request.{key} must be a string"
        )
    return value


def _obj(req: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = req.get(key)
    if value is not None and not isinstance(value, dict):
        raise ReviewError(f"request.{key} must be an object")
    return value


def parse_review(body: bytes) -> AdmissionRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise ReviewError("body must be a JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected apiVersion {API_VERSION} kind AdmissionReview")
    req = doc.get("request")
    if not isinstance(req, dict):
        raise ReviewError("request must be an object")
    kind = req.get("kind")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str) or not kind["kind"]:
        raise ReviewError("request.kind.kind must be a non-empty string")
    group = kind.get("group", "")
    if not isinstance(group, str):
        raise ReviewError("request.kind.group must be a string")
    dry_run = req.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ReviewError("request.dryRun must be a boolean")
    # Fast path for the common shape (all strings present and non-empty where required);
    # anything else goes through _str for the exact error.
    get = req.get
    uid, operation = get("uid"), get("operation")
    namespace, name, sub_resource = get("namespace"), get("name"), get("subResource")
    if not (type(uid) is str and uid and type(operation) is str and operation):
        uid, operation = _str(req, "uid", required=True), _str(req, "operation", required=True)
    if type(namespace) is not str:
        namespace = _str(req, "namespace")
    if type(name) is not str:
        name = _str(req, "name")
    if type(sub_resource) is not str:
        sub_resource = _str(req, "subResource")
    obj, old_obj = get("object"), get("oldObject")
    if obj is not None and type(obj) is not dict:
        obj = _obj(req, "object")
    if old_obj is not None and type(old_obj) is not dict:
        old_obj = _obj(req, "oldObject")
    return AdmissionRequest(uid, kind["kind"], group, operation, namespace, name, sub_resource, obj, old_obj, dry_run)


def encode_response(
    uid: str,
    *,
    allowed: bool = True,
    patch: Sequence[Mapping[str, Any]] = (),
    warnings: Sequence[str] = (),
    message: str = "",
    code: int = 403,
) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = b2a_base64(orjson.dumps(list(patch)), newline=False).decode()
    if warnings:
        response["warnings"] = list(warnings)
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": "Invalid" if code == 422 else "Forbidden"}
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
