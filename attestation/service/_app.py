"""The verifier service's ASGI app: request parsing, verification, metrics, access log."""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from cryptography import x509
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from attestation._chain import DEFAULT_CACHE_SIZE
from attestation._output import certificate_json
from attestation._output import iso_time as _iso
from attestation.document import VerifiedDocument
from attestation.errors import AttestationError
from attestation.policy import Policy
from attestation.service._config import (
    CONFIG_ENV,
    ConfigError,
    PolicyConfig,
    ServiceConfig,
    load_config,
)
from attestation.service._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from attestation.service._metrics import Registry
from attestation.service._middleware import HeadLimits, Observe, access_log
from attestation.service._openapi import openapi_schema
from attestation.service._wire import CBOR, JSON, MAX_NONCE_BYTES
from attestation.verifier import Verifier
from nsm_attestation_cli import error_json

__all__ = ["app_from_environment", "configure_logging", "create_app"]

_CBOR_BYTES = CBOR.encode()
_JSON_BYTES = JSON.encode()
_NONCE = re.compile(rf"(?:[0-9a-fA-F]{{2}}){{1,{MAX_NONCE_BYTES}}}")
# RFC 3339 §5.6 date-time, which is what OpenAPI's `format: date-time` means; an offset is
# required so that no verification time is ever read in the server's local zone.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_QUERY_KEYS = frozenset({"policy", "nonce", "at"})
_JSON_KEYS = frozenset({"document", "policy", "nonce", "at"})

_log = logging.getLogger("attestation.service")


class _Disconnected(Exception):
    """The client went away before sending the whole body: there is no one to answer."""


class _RequestError(Exception):
    """A request the service will not verify: HTTP status, stable code, reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


# Hints by error code, in terms of this API and its config (the library's name Python calls).
_HINTS = {
    "request.content-type": "POST the raw document as application/cbor with ?policy=NAME, or "
    'application/json {"document": BASE64, "policy": NAME}',
    "request.policy": "name one of the policies GET /healthz lists",
    "request.unknown-policy": "name one of the policies GET /healthz lists",
    "request.at-not-allowed": "the server's config must set allow_at_override = true "
    "(for audit deployments)",
    "request.nonce": f"send the nonce as 1..{MAX_NONCE_BYTES} bytes of hex",
    "request.at": "send at as RFC 3339 with an offset, e.g. 2026-01-02T03:04:05Z",
    "policy.debug": "only a policy with allow_debug = true in the server's config accepts "
    "debug-mode enclaves (development only)",
    "chain.expired": "a stored document verifies at its own time: send at = its timestamp "
    "(needs allow_at_override)",
    "policy.nonce-mismatch": "send the nonce the enclave was asked to include",
    "policy.stale": "ask the enclave for a fresh document",
}


def _error_body(code: str, reason: str, **context: object) -> bytes:
    return _dumps(error_json(code, reason, _HINTS.get(code), **context))


def _dumps(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json(
    status: int, body: Mapping[str, object], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(_dumps(body), status_code=status, media_type=JSON, headers=headers)


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MILLISECOND = _dt.timedelta(milliseconds=1)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _hex_json(value: bytes | None) -> str:
    return "null" if value is None else f'"{value.hex()}"'


class _PathJson:
    """The JSON array describing a verified certificate path, cached by the path's identity.

    A warm verification returns the very tuple held in the verifier's chain cache, so the same
    few tuples recur on every request; rendering them (or even hashing five certificates) each
    time costs as much as parsing the document. Each entry holds its tuple, so the `id` cannot
    be reused by another object while the entry exists; the `is` check makes that explicit.
    """

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        self._maxsize = maxsize
        self._entries: dict[int, tuple[tuple[x509.Certificate, ...], str]] = {}

    def __call__(self, certificates: tuple[x509.Certificate, ...]) -> str:
        entry = self._entries.get(id(certificates))
        if entry is not None and entry[0] is certificates:
            return entry[1]
        text = json.dumps([certificate_json(c) for c in certificates], separators=(",", ":"))
        if len(self._entries) >= self._maxsize:
            del self._entries[next(iter(self._entries))]  # oldest first (dicts keep order)
        self._entries[id(certificates)] = (certificates, text)
        return text


def _verified_json(doc: VerifiedDocument, *, policy: str, at: _dt.datetime, path: str) -> bytes:
    # `doc.to_dict()` plus the policy's name (the one result shape; a test holds the two equal),
    # assembled as text: this runs once per verified request, and json.dumps of the whole dict
    # cost a sizeable share of the service's own overhead. Only `module_id` and `digest` come
    # from the document as text, and they go through json.dumps; everything else is hex, a
    # number, a boolean, a timestamp or a policy name from the validated config.
    pcrs = ",".join(f'"{index}":"{value.hex()}"' for index, value in sorted(doc.pcrs.items()))
    return (
        f'{{"verified":true,"policy":"{policy}","verified_at":"{_iso(at)}",'
        f'"module_id":{json.dumps(doc.module_id)},"timestamp":"{_iso(doc.timestamp)}",'
        f'"timestamp_ms":{(doc.timestamp - _EPOCH) // _MILLISECOND},'
        f'"digest":{json.dumps(doc.digest)},"debug":{"true" if doc.is_debug else "false"},'
        f'"pcrs":{{{pcrs}}},"public_key":{_hex_json(doc.public_key)},'
        f'"user_data":{_hex_json(doc.user_data)},"nonce":{_hex_json(doc.nonce)},'
        f'"certificates":{path}}}'
    ).encode()


class _Service:
    """The request handlers, bound to one config, one verifier and one metrics registry."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        verifier: Verifier,
        clock: Callable[[], _dt.datetime],
        registry: Registry,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.clock = clock
        self.registry = registry
        # Policies without a nonce are the same on every request: build them once.
        self.policies: dict[str, tuple[PolicyConfig, Policy]] = {
            name: (policy, policy.build()) for name, policy in config.policies.items()
        }
        self.openapi = json.dumps(openapi_schema(config)).encode()
        self.path_json = _PathJson()

    async def verify(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /v1/verify`, as a plain ASGI endpoint (see `_VerifyEndpoint`)."""
        state = scope.setdefault("nitro_attest", {})
        try:
            status, body = await self._answer(scope, receive, state)
        except _Disconnected:
            state["disconnected"] = True  # nothing to answer; `Observe` counts it apart
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self, scope: Scope, receive: Receive, state: dict[str, Any]
    ) -> tuple[int, bytes]:
        try:
            document, name, nonce, at = await self._parse(scope, receive, state)
            entry = self.policies.get(name)
            if entry is None:
                raise _RequestError(400, "request.unknown-policy", f"no policy named {name!r}")
            policy_config, policy = entry
            if nonce is not None:
                policy = policy_config.build(nonce=nonce)
        except _RequestError as exc:
            state["code"] = exc.code
            return exc.status, _error_body(exc.code, exc.reason, verified=False)
        when = self.clock() if at is None else at
        # Verification runs on the event loop thread on purpose: it is CPU-bound (about one
        # P-384 check when warm) and holds the GIL, so a thread pool would add a hop per request
        # without adding parallelism. Scale with processes instead (docs/deployment.md).
        try:
            doc = self.verifier.verify(document, policy=policy, at=when)
        except AttestationError as exc:
            state["code"] = exc.code
            return 422, _error_body(exc.code, exc.reason, verified=False, policy=name)
        state["code"] = "ok"
        return 200, _verified_json(doc, policy=name, at=when, path=self.path_json(doc.certificates))

    async def _parse(
        self, scope: Scope, receive: Receive, state: dict[str, Any]
    ) -> tuple[bytes, str, bytes | None, _dt.datetime | None]:
        content_type = content_length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                content_length = value
        media_type = (content_type or b"").partition(b";")[0].strip().lower()
        if media_type not in (_CBOR_BYTES, _JSON_BYTES):
            raise _RequestError(
                415, "request.content-type", f"send {CBOR} (raw document) or {JSON}"
            )
        body = await self._body(receive, content_length)
        state["bytes"] = len(body)
        query = scope.get("query_string", b"")
        params: dict[str, list[str]] = {}
        if query:
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                params.setdefault(key, []).append(value)
        if media_type == _CBOR_BYTES:
            unknown = set(params) - _QUERY_KEYS
            if unknown:
                raise _RequestError(
                    400,
                    "request.unknown-parameter",
                    f"unknown query parameter(s): {sorted(unknown)}",
                )
            if len(params.get("policy", ())) != 1:
                raise _RequestError(400, "request.policy", "name exactly one policy: ?policy=NAME")
            for key in ("nonce", "at"):
                if len(params.get(key, ())) > 1:
                    raise _RequestError(400, f"request.{key}", f"{key} given more than once")
            name = params["policy"][0]
            nonce_text = params["nonce"][0] if "nonce" in params else None
            at_text = params["at"][0] if "at" in params else None
            document = body
        else:
            if params:
                raise _RequestError(
                    400,
                    "request.unknown-parameter",
                    "with application/json, put policy, nonce and at in the body, not the query",
                )
            name, document, nonce_text, at_text = self._json_fields(body)
        state["policy"] = name if name in self.policies else None
        nonce = self._nonce(nonce_text)
        at = self._at(at_text)
        return document, name, nonce, at

    async def _body(self, receive: Receive, declared: bytes | None) -> bytes:
        limit = self.config.max_body_bytes
        if declared is not None:
            if not declared.isdigit():
                raise _RequestError(400, "request.content-length", "invalid Content-Length")
            if int(declared) > limit:
                raise _RequestError(413, "request.too-large", f"body is over {limit} bytes")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            body += chunk
            # A chunked body has no Content-Length: stop reading as soon as it is too large.
            if len(body) > limit:
                raise _RequestError(413, "request.too-large", f"body is over {limit} bytes")
            if not message.get("more_body", False):
                return body

    @staticmethod
    def _json_fields(body: bytes) -> tuple[str, bytes, str | None, str | None]:
        try:
            # Strict JSON (RFC 8259): UTF-8 only (json.loads would guess UTF-16/32 from bytes),
            # no NaN/Infinity literals (Python's extension), no byte order mark.
            fields = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _RequestError(400, "request.json", "the body is not valid UTF-8 JSON") from exc
        if not isinstance(fields, dict):
            raise _RequestError(400, "request.json", "the body must be a JSON object")
        unknown = set(fields) - _JSON_KEYS
        if unknown:
            raise _RequestError(
                400, "request.unknown-field", f"unknown field(s): {sorted(unknown)}"
            )
        name, encoded = fields.get("policy"), fields.get("document")
        if not isinstance(name, str):
            raise _RequestError(400, "request.policy", '"policy" must be a string')
        if not isinstance(encoded, str):
            raise _RequestError(400, "request.document", '"document" must be a base64 string')
        try:
            document = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _RequestError(400, "request.document", '"document" is not base64') from exc
        nonce, at = fields.get("nonce"), fields.get("at")
        for key, value in (("nonce", nonce), ("at", at)):
            if value is not None and not isinstance(value, str):
                raise _RequestError(400, f"request.{key}", f'"{key}" must be a string')
        return name, document, nonce, at

    @staticmethod
    def _nonce(text: str | None) -> bytes | None:
        if text is None:
            return None
        if not _NONCE.fullmatch(text):
            raise _RequestError(
                400, "request.nonce", f"nonce must be 1..{MAX_NONCE_BYTES} bytes in hex"
            )
        return bytes.fromhex(text)

    def _at(self, text: str | None) -> _dt.datetime | None:
        if text is None:
            return None
        if not self.config.allow_at_override:
            raise _RequestError(
                400,
                "request.at-not-allowed",
                "this service verifies at its own clock (allow_at_override is off)",
            )
        if not _RFC3339.fullmatch(text):
            raise _RequestError(400, "request.at", "at must be an RFC 3339 date-time with offset")
        text = text.upper()  # RFC 3339 allows lower-case t and z; fromisoformat does not.
        # RFC 3339 §5.7 allows a leap second (:60), which datetime cannot hold: read it as the
        # instant that follows (POSIX time, and so document timestamps, never contain it).
        leap = text[17:19] == "60"
        try:
            when = _dt.datetime.fromisoformat(text[:17] + "59" + text[19:] if leap else text)
            return when + _dt.timedelta(seconds=1) if leap else when
        except (ValueError, OverflowError) as exc:
            raise _RequestError(400, "request.at", f"at is not a valid time: {exc}") from exc

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok", "policies": sorted(self.policies)})

    async def metrics(self, request: Request) -> Response:
        return Response(self.registry.render(), media_type=METRICS_CONTENT_TYPE)

    async def openapi_json(self, request: Request) -> Response:
        return Response(self.openapi, media_type=JSON)


class _VerifyEndpoint:
    """`POST /v1/verify` as a raw ASGI app (Starlette routes to it and handles 404/405).

    Not a Starlette `Request`/`Response` handler: this path runs once per verification, and
    those objects (headers, query multidict, response class) cost a measurable share of the
    service's own overhead per request (bench/service.py), for nothing this endpoint needs.
    """

    def __init__(self, service: _Service) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.service.verify(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "request.not-found", 405: "request.method"}.get(exc.status_code, "request.http")
    return _json(exc.status_code, error_json(code, exc.detail), headers=exc.headers)


def create_app(
    config: ServiceConfig,
    *,
    verifier: Verifier | None = None,
    clock: Callable[[], _dt.datetime] = _utcnow,
) -> ASGIApp:
    """The ASGI app for `config`. `verifier` defaults to one over the config's trust roots."""
    if verifier is None:
        verifier = Verifier(roots=config.roots, clock=clock)
    registry = Registry()
    service = _Service(config, verifier=verifier, clock=clock, registry=registry)
    chosen = verifier
    registry.sampled(
        "nitro_attest_chain_cache_hits_total",
        "Verifications whose certificate path came from the chain cache.",
        kind="counter",
        read=lambda: chosen.cache_info().hits,
    )
    registry.sampled(
        "nitro_attest_chain_cache_misses_total",
        "Verifications that validated the certificate path from scratch.",
        kind="counter",
        read=lambda: chosen.cache_info().misses,
    )
    registry.sampled(
        "nitro_attest_chain_cache_entries",
        "Certificate paths currently cached (per process).",
        kind="gauge",
        read=lambda: chosen.cache_info().size,
    )
    app = Starlette(
        routes=[
            Route("/v1/verify", _VerifyEndpoint(service), methods=["POST"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/metrics", service.metrics, methods=["GET"]),
            Route("/openapi.json", service.openapi_json, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    # Starlette would answer `/v1/verify/` with a 307 whose Location is built from the
    # client's Host header; no redirect is built from client input: 404 instead.
    app.router.redirect_slashes = False
    return Observe(HeadLimits(app), registry=registry, access_log=config.access_log)


def configure_logging() -> None:
    """Access log lines (already JSON) go to stderr as they are; other records get a prefix."""
    if not access_log.handlers:  # once per process, however many apps are made
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def app_from_environment() -> ASGIApp:
    """An app from the config file named by `$NITRO_ATTEST_SERVICE_CONFIG`, for ASGI servers.

    For another ASGI server, one process per port: forked workers sharing a port would each
    keep their own metrics, and scrapes would see counters go backwards. The connection bounds
    (deadlines, connection cap) are `nitro-attest serve`'s, not the app's (docs/deployment.md).
    """
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"set {CONFIG_ENV} to the service's TOML config file")
    config = load_config(path)
    if config.access_log:
        configure_logging()
    return create_app(config)
