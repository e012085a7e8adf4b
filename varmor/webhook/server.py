"""The aiohttp shell: /mutate and /validate over TLS, answers never a 5xx.

Malformed reviews get 400 with the reason; oversized bodies get 413 (aiohttp's
client_max_size); a bug in planning is answered "allowed, unchanged" (fail-open,
counted in varmor_admission_unconfined_total{reason="error"}) rather than a 500. A policy
the validator cannot judge (any exception, RecursionError included) is refused: refusing
a policy is safe, the user can retry. Anything else that raises (a hostile body the
decoders did not foresee) is a 400 naming the exception: a catch-all around each handler,
free on the hot path (Python's exceptions cost nothing until raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter

from aiohttp import web

from varmor.admission.planner import PlanError
from varmor.admission.review import (
    ReviewError,
    ValidationRequest,
    encode_response,
    parse_mutation_review,
    parse_validation_review,
)
from varmor.webhook import metrics
from varmor.webhook.mutate import Decision, MutationState, decide
from varmor.webhook.validate import PolicyValidator, Verdict

log = logging.getLogger(__name__)
record = metrics.record

DEFAULT_MAX_BODY = 6 * 1024 * 1024  # object + oldObject of the largest (1.5 MiB) objects, with room
JSON = "application/json"


def _bad_request(endpoint: str, reason: str) -> web.Response:
    metrics.count_request(endpoint, "other", "", "malformed")
    return web.json_response({"error": reason}, status=400)


def _unexpected(endpoint: str, exc: BaseException) -> web.Response:
    log.warning("%s: unprocessable review (%s)", endpoint, type(exc).__name__)
    return _bad_request(endpoint, f"cannot process this AdmissionReview ({type(exc).__name__})")


def _too_large(endpoint: str, exc: web.HTTPRequestEntityTooLarge) -> web.Response:
    metrics.count_request(endpoint, "other", "", "too_large")
    return web.json_response({"error": exc.text or "request body too large"}, status=413)


async def _read_validation(request: web.Request, endpoint: str) -> ValidationRequest | web.Response:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        return _too_large(endpoint, exc)
    try:
        return parse_validation_review(body)
    except ReviewError as exc:
        return _bad_request(endpoint, str(exc))


def build_app(
    state: MutationState,
    validator: PolicyValidator | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    sync_wait: float = 2.0,
    synced: asyncio.Event | None = None,
) -> web.Application:
    """The admission app. `synced`, when given, is awaited (bounded) before mutating."""

    async def mutate(request: web.Request) -> web.Response:
        # The hot path: kept flat (no helper coroutine, no isinstance against aiohttp's
        # ABC-derived Response) because every Python-level step here is paid per admission.
        try:
            start = perf_counter()
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge as exc:
                return _too_large("mutate", exc)
            try:
                req = parse_mutation_review(raw)
            except ReviewError as exc:
                return _bad_request("mutate", str(exc))
            if synced is not None and not state.synced:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(synced.wait(), sync_wait)
            try:
                decision = decide(state, req)
            except PlanError as exc:
                return _bad_request("mutate", f"request.object: {exc}")
            except Exception:
                log.exception("mutation planning failed; admitting unchanged")
                metrics.UNCONFINED.labels(metrics.kind_label(req.kind), "error").inc()
                decision = Decision("error")
            body = encode_response(req.uid, patch=decision.patch, warnings=decision.warnings)
            record("mutate", req.gvk.kind, req.operation, decision.result, perf_counter() - start)
            return web.Response(body=body, content_type=JSON)
        except Exception as exc:
            return _unexpected("mutate", exc)

    async def validate(request: web.Request) -> web.Response:
        try:
            start = perf_counter()
            parsed = await _read_validation(request, "validate")
            if isinstance(parsed, web.Response):
                return parsed
            req = parsed
            try:
                verdict = await validator.validate(req) if validator else Verdict(True, result="ignored")
            except Exception as exc:
                log.warning("policy validation raised %s; refusing", type(exc).__name__)
                verdict = Verdict(
                    False, f"varmor could not validate this policy ({type(exc).__name__})", result="error"
                )
            body = encode_response(
                req.uid, allowed=verdict.allowed, warnings=verdict.warnings, message=verdict.message, code=verdict.code
            )
            record("validate", req.kind, req.operation, verdict.result, perf_counter() - start)
            return web.Response(body=body, content_type=JSON)
        except Exception as exc:
            return _unexpected("validate", exc)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/mutate", mutate)
    app.router.add_post("/validate", validate)
    app.router.add_get("/healthz", healthz)
    return app
