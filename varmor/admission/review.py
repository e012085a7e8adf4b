"""AdmissionReview v1 on the wire: strict parsing and response encoding.

Anything not shaped like an admission.k8s.io/v1 AdmissionReview is a ReviewError,
which the server answers with 400 and the reason, never a 500. That includes JSON nested
deeper than the interpreter's recursion limit (msgspec raises RecursionError there).
"""

from __future__ import annotations

from binascii import b2a_base64
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import orjson

from varmor.admission.objects import ObjectView

API_VERSION = "admission.k8s.io/v1"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
ObjectT = TypeVar("ObjectT")


class ReviewError(ValueError):
    pass


class GroupVersionKind(msgspec.Struct, gc=False):
    kind: NonEmpty
    group: str = ""
    version: str = ""


class UserInfo(msgspec.Struct, gc=False):
    """The authenticated caller (only the node-report guard reads it)."""

    username: str = ""
    extra: dict[str, list[str]] = msgspec.field(default_factory=dict)


class AdmissionRequest(msgspec.Struct, Generic[ObjectT], rename="camel", kw_only=True, gc=False):
    """`request` of an AdmissionReview; `obj` is typed per endpoint (see the decoders)."""

    uid: NonEmpty
    gvk: GroupVersionKind = msgspec.field(name="kind")
    operation: NonEmpty
    namespace: str = ""
    name: str = ""
    sub_resource: str = ""
    obj: ObjectT | None = msgspec.field(default=None, name="object")
    old_obj: ObjectT | None = msgspec.field(default=None, name="oldObject")
    dry_run: bool = False
    # Kept raw: /mutate never reads it, so it costs a slice, not a decode, per admission.
    user_info: msgspec.Raw = msgspec.field(default=msgspec.Raw(b"{}"), name="userInfo")

    @property
    def user(self) -> UserInfo:
        return _USER_INFO.decode(self.user_info)

    @property
    def kind(self) -> str:
        return self.gvk.kind

    @property
    def group(self) -> str:
        return self.gvk.group


class AdmissionReview(msgspec.Struct, Generic[ObjectT], rename="camel", gc=False):
    api_version: str = ""
    kind: str = ""
    request: AdmissionRequest[ObjectT] | None = None


MutationRequest = AdmissionRequest[ObjectView]
ValidationRequest = AdmissionRequest[dict[str, Any]]
# /mutate reads a typed view of the object and skips the rest; /validate needs the policy whole.
_USER_INFO = msgspec.json.Decoder(UserInfo)
_MUTATION = msgspec.json.Decoder(AdmissionReview[ObjectView])
_VALIDATION = msgspec.json.Decoder(AdmissionReview[dict[str, Any]])


def _parse(decoder: msgspec.json.Decoder[AdmissionReview[Any]], body: bytes) -> AdmissionRequest[Any]:
    try:
        review = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ReviewError(f"not an AdmissionReview: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ReviewError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise ReviewError("body is nested too deeply") from None
    if review.api_version != API_VERSION or review.kind != "AdmissionReview":
        raise ReviewError(f"expected apiVersion {API_VERSION} kind AdmissionReview")
    if review.request is None:
        raise ReviewError("request must be an object")
    return review.request


def parse_mutation_review(body: bytes) -> MutationRequest:
    """The request of a review sent to /mutate; ReviewError if anything is misshapen."""
    return _parse(_MUTATION, body)


def parse_validation_review(body: bytes) -> ValidationRequest:
    return _parse(_VALIDATION, body)


# The status reason of a refusal, by code (the API server shows both to the user).
_REASONS = {422: "Invalid", 429: "TooManyRequests"}
_ENVELOPE = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":'


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
        response["patch"] = b2a_base64(orjson.dumps(patch), newline=False).decode()
    if warnings:
        response["warnings"] = warnings
    if not allowed:
        response["status"] = {"code": code, "message": message, "reason": _REASONS.get(code, "Forbidden")}
    return _ENVELOPE + orjson.dumps(response) + b"}"
