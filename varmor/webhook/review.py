"""AdmissionReview v1 on the wire: strict parsing and response encoding.

Anything not shaped like an admission.k8s.io/v1 AdmissionReview is a ReviewError,
which the server answers with 400 and the reason, never a 500.
"""

from __future__ import annotations

import base64
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
    return AdmissionRequest(
        uid=_str(req, "uid", required=True),
        kind=kind["kind"],
        group=group,
        operation=_str(req, "operation", required=True),
        namespace=_str(req, "namespace"),
        name=_str(req, "name"),
        sub_resource=_str(req, "subResource"),
        obj=_obj(req, "object"),
        old_obj=_obj(req, "oldObject"),
        dry_run=dry_run,
    )


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
        response["patch"] = base64.b64encode(orjson.dumps(list(patch))).decode()
    if warnings:
        response["warnings"] = list(warnings)
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": "Invalid" if code == 422 else "Forbidden"}
    return orjson.dumps({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
