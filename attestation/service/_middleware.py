"""The service's outer ASGI layers: the head-size bound, and metrics plus the access log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attestation.service._metrics import Registry
from attestation.service._wire import JSON, MAX_HEAD_BYTES, MAX_HEADERS
from nsm_attestation_cli import error_json

__all__ = ["HeadLimits", "Observe", "access_log"]

access_log = logging.getLogger("attestation.service.access")
_JSON_BYTES = JSON.encode()
# Routes with their own metrics label; anything else is "other", so that scanners probing random
# paths cannot grow the label set without bound.
_ROUTES = ("/v1/verify", "/healthz", "/metrics", "/openapi.json")


class HeadLimits:
    """431 for a head over `MAX_HEAD_BYTES` or `MAX_HEADERS`, whatever the server let through.

    `nitro-attest serve`'s parser bounds what an incomplete head can make it buffer; this
    bounds the complete ones, and holds under any ASGI server.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
            size += sum(len(name) + len(value) + 4 for name, value in headers)
            if len(headers) > MAX_HEADERS or size > MAX_HEAD_BYTES:
                state = scope.setdefault("nitro_attest", {})
                state["code"] = "request.head-too-large"
                reason = f"request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers"
                hint = "send at most 16 KiB of request line and headers"
                body = json.dumps(error_json(state["code"], reason, hint)).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 431,
                        "headers": [
                            (b"content-type", _JSON_BYTES),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class Observe:
    """Outermost ASGI layer: request metrics and a structured access log line per request.

    It records what the handler concluded (outcome, error code, policy name), sizes and
    timings; never a body, a query string (it may carry a nonce) or a header value.
    """

    def __init__(self, app: ASGIApp, *, registry: Registry, access_log: bool) -> None:
        self.app = app
        self.registry = registry  # the server adds its connection series (`_server.serve`)
        self.access_log = access_log
        self.requests = registry.counter(
            "nitro_attest_requests_total", "HTTP requests by route, status, outcome and error code."
        )
        self.latency = registry.histogram(
            "nitro_attest_verify_duration_seconds",
            "Time to answer POST /v1/verify (reading the body included), in seconds.",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        path: str = scope.get("path", "")
        route = path if path in _ROUTES else "other"
        state: dict[str, Any] = scope.get("nitro_attest", {})
        code = state.get("code", "")
        if state.get("disconnected"):
            # The client left before its body was complete: nothing was answered, nothing
            # failed. nginx's 499 ("client closed request") labels it in metrics and the log.
            status = _CLIENT_CLOSED
        outcome = _outcome(status, verify=route == "/v1/verify")
        self.requests.inc(
            (("route", route), ("status", str(status)), ("outcome", outcome), ("code", code))
        )
        if route == "/v1/verify":
            self.latency.observe(elapsed)
        if self.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(_access_line(scope, route, status, outcome, code, state, elapsed))


def _quoted(value: str | None) -> str:
    return f'"{value}"' if value else "null"


def _access_line(
    scope: Scope,
    route: str,
    status: int,
    outcome: str,
    code: str,
    state: Mapping[str, Any],
    elapsed: float,
) -> str:
    # Built by hand: json.dumps of a dict cost more than the rest of the service's overhead.
    # Every value is a number, a literal above, a library/service error code, or a policy name
    # from the validated config; client address and method come from the server and are quoted
    # with json.dumps. `policy` is only set for configured names, so a client cannot inject one.
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    client = scope.get("client")
    policy = state.get("policy")
    size = state.get("bytes")
    return (
        f'{{"ts":"{stamp}.{int(now % 1 * 1000):03d}Z",'
        f'"client":{json.dumps(client[0]) if client else "null"},'
        f'"method":{json.dumps(scope.get("method"))},"path":"{route}","status":{status},'
        f'"outcome":"{outcome}","code":{_quoted(code)},"policy":{_quoted(policy)},'
        f'"body_bytes":{size if size is not None else "null"},'
        f'"duration_ms":{elapsed * 1000:.3f}}}'
    )


_CLIENT_CLOSED = 499
_OUTCOMES = {
    _CLIENT_CLOSED: "client_disconnected",
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    431: "head_too_large",
    415: "unsupported_media_type",
    422: "rejected",
}


def _outcome(status: int, *, verify: bool) -> str:
    if status == 200:
        return "verified" if verify else "ok"
    return _OUTCOMES.get(status, "error" if status >= 500 else "other")
