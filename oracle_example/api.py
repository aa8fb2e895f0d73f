"""The oracle's HTTP/1.1 API, served inside the enclave (over vsock in production).

API (HTTP/1.1, one request per connection, JSON everywhere, errors as
`{"error": {"code", "message"}}`):

- `GET /v1/attestation?nonce=HEX`: a fresh document bound to the nonce (1..64 bytes); without a
  nonce, the cached periodic document.
- `GET /v1/price/{feed}` (`BTC-USD`, `BTC%2FUSD` or `BTC/USD`), optional `?domain=N`: the signed
  report JSON (report.py) for that domain, index into the config's domain list: the last good
  price until its `expiresAt`, even when later rounds were refused; then the latest round.
- `GET /v1/error/{feed}`, same options: the latest round's signed `OracleError`, served beside
  the price; 404 `error.none` when the latest round priced.
- `GET /v1/health`: mode, address, hashes, PCRs, clock check, per-feed and per-source state.

Request targets are origin-form or absolute-form (RFC 9112 §3.2); anything else is a 400. A
connection takes one of `MAX_CLIENTS` slots only once its request is read; when none is free the
answer is 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from enclave_net.address import Address, UnixAddress, bind_socket
from enclave_net.gateway import finish_answer
from oracle_example.errors import OracleExampleError
from oracle_example.eth import to_checksum_address
from oracle_example.oracle import Oracle

__all__ = ["DEFAULT_LISTEN", "MAX_NONCE_BYTES", "MAX_REQUEST_HEAD", "serve"]

log = logging.getLogger("oracle_example.api")

#: Any CID may connect (VMADDR_CID_ANY); the parent's gateway is the only one that can.
DEFAULT_LISTEN = "vsock:4294967295:5000"
#: A request head is a GET line and a few headers; h11's default bound is 16 KiB.
MAX_REQUEST_HEAD = 8 * 1024
MAX_TARGET = 1024
#: AWS allows 1024 bytes of nonce; a challenge needs 16-32. 64 leaves room for a hash of context.
MAX_NONCE_BYTES = 64
#: The whole request must arrive within this (slowloris). No slot is held meanwhile, so an idle
#: connection costs a socket and this much time, never a turn of a real request.
REQUEST_TIMEOUT = 5.0
#: Requests handled at once; a request read when all are taken is answered 503 + Retry-After.
MAX_CLIENTS = 64
#: Connections open at once (most of them reading a request); beyond this, 503 at once. Above
#: the gateway's own cap (256), so only a misbehaving parent meets it.
MAX_CONNECTIONS = 512
RETRY_AFTER_SECONDS = 1
#: After the answer, how long the client's remaining input is read and dropped before closing
#: (`finish_answer`: unread input at close resets the connection and can destroy the answer).
LINGER_SECONDS = 1.0
_FEED_PATH = re.compile(r"/v1/(price|error)/([A-Za-z0-9]{1,16})[-/]([A-Za-z0-9]{1,16})")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_DOMAIN = re.compile(r"[0-9]{1,3}")  # ASCII digits: str.isdigit() also takes '²' and '٣'
# RFC 9112 §3.2: origin-form is absolute-path ["?" query] (RFC 9110 §4.1, RFC 3986 §3.3-3.4);
# absolute-form adds "http://authority" in front.
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_ORIGIN_FORM = re.compile(rf"((?:/{_PCHAR}*)+)(?:\?((?:{_PCHAR}|[/?])*))?")
_ABSOLUTE_PREFIX = re.compile(r"https?://[^/?#]*", re.IGNORECASE)


# --- HTTP -----------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _response(status: int, body: Mapping[str, object] | dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    reason = HTTPStatus(status).phrase
    retry = f"Retry-After: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\n"
        f"{retry}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + data


def _error_body(code: str, message: str) -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


async def _read_request(reader: asyncio.StreamReader) -> h11.Request:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    request: h11.Request | None = None
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            raise _HttpError(status, "http.bad_request", str(exc)) from exc
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            received += len(data)
            if received > MAX_REQUEST_HEAD:
                # h11 bounds only an incomplete head; a GET has nothing else, so bound it all.
                raise _HttpError(431, "http.too_large", f"request over {MAX_REQUEST_HEAD} bytes")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
            if event.method != b"GET":
                raise _HttpError(405, "http.method", "only GET is served")
            if len(event.target) > MAX_TARGET:
                raise _HttpError(414, "http.uri_too_long", f"target over {MAX_TARGET} bytes")
        elif isinstance(event, h11.Data):
            raise _HttpError(413, "http.body", "a GET carries no body")
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request
        elif isinstance(event, h11.ConnectionClosed):
            raise _HttpError(400, "http.closed", "connection closed mid-request")


def _split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form or absolute-form request target."""
    absolute = _ABSOLUTE_PREFIX.match(target)
    if absolute is not None:
        try:  # the authority must parse (RFC 3986 §3.2); .port raises on a bad port
            parts = urlsplit(absolute.group(0))
            valid = bool(parts.hostname) and parts.port != 0
        except ValueError:
            valid = False
        if not valid:
            raise _HttpError(400, "http.target", f"bad authority in {absolute.group(0)!r}")
        target = target[absolute.end() :]
        target = target if target.startswith("/") else "/" + target
    match = _ORIGIN_FORM.fullmatch(target)
    if match is None:
        raise _HttpError(400, "http.target", "request target must be /path[?query] (RFC 9112)")
    return match.group(1), match.group(2) or ""


def _query(text: str, allowed: set[str]) -> dict[str, str]:
    try:
        # Blank values are kept, so `nonce=` is a bad nonce rather than no nonce.
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            max_num_fields=len(allowed) or 1,
        )
    except ValueError as exc:
        raise _HttpError(400, "http.query", f"bad query string: {exc}") from exc
    out = dict(pairs)
    if len(out) != len(pairs) or not set(out) <= allowed:
        raise _HttpError(400, "http.query", f"query parameters allowed: {sorted(allowed)}")
    return out


async def _route(oracle: Oracle, target: str) -> tuple[int, dict[str, object]]:
    path, query_text = _split_target(target)
    if path == "/v1/health":
        _query(query_text, set())
        return 200, oracle.health()
    if path == "/v1/attestation":
        query = _query(query_text, {"nonce"})
        nonce: bytes | None = None
        if "nonce" in query:
            text = query["nonce"]
            if not _HEX.fullmatch(text) or not 1 <= len(text) // 2 <= MAX_NONCE_BYTES:
                raise _HttpError(
                    400, "attestation.nonce", f"nonce must be hex of 1..{MAX_NONCE_BYTES} bytes"
                )
            nonce = bytes.fromhex(text)
        try:
            document = await oracle.attestation(nonce)
        except OracleExampleError as exc:
            raise _HttpError(503, "attestation.nsm", str(exc)) from exc
        return 200, {
            "document": base64.b64encode(document).decode("ascii"),
            "address": to_checksum_address(oracle.address),
            "publicKey": "0x" + oracle.public_key.hex(),
            "nonce": None if nonce is None else nonce.hex(),
        }
    match = _FEED_PATH.fullmatch(unquote(path))
    if match is not None:
        query = _query(query_text, {"domain"})
        kind = match.group(1)
        symbol = f"{match.group(2)}/{match.group(3)}".upper()
        if symbol not in {f.symbol for f in oracle.config.feeds}:
            raise _HttpError(404, "price.unknown_feed", f"no feed {symbol}")
        domain_text = query.get("domain", "0")
        if not _DOMAIN.fullmatch(domain_text) or int(domain_text) >= len(oracle.config.domains):
            raise _HttpError(
                400, "price.domain", f"domain must be 0..{len(oracle.config.domains) - 1}"
            )
        if kind == "error":
            refusal = oracle.error(symbol, int(domain_text))
            if refusal is None:
                raise _HttpError(404, "error.none", f"the latest {symbol} round priced")
            return 200, refusal.to_json()
        report = oracle.report(symbol, int(domain_text))
        if report is None:
            raise _HttpError(503, "price.not_ready", f"no report for {symbol} yet")
        return 200, report.to_json()
    raise _HttpError(404, "http.not_found", f"no route {path}")


async def serve(oracle: Oracle, listen: Address, stop: asyncio.Event) -> None:
    """Run the fetch loop and the API on `listen` until `stop` is set; then clean up."""
    slots = asyncio.Semaphore(MAX_CLIENTS)
    connections = 0

    async def answer(reader: asyncio.StreamReader) -> bytes:
        # The request first, without a slot: a slot is a turn of the oracle, not a socket.
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await _read_request(reader)
        except _HttpError as exc:
            return _response(exc.status, _error_body(exc.code, exc.message))
        except TimeoutError:
            return _response(408, _error_body("http.timeout", "request too slow"))
        if slots.locked():
            return _response(503, _error_body("http.busy", "too many requests at once"))
        async with slots:
            try:
                status, body = await _route(oracle, request.target.decode("ascii", "replace"))
            except _HttpError as exc:
                status, body = exc.status, _error_body(exc.code, exc.message)
            return _response(status, body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            if connections > MAX_CONNECTIONS:
                data = _response(503, _error_body("http.busy", "too many connections"))
            else:
                data = await answer(reader)
            writer.write(data)
            await writer.drain()
            await finish_answer(reader, writer, linger=LINGER_SECONDS)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("API handler failed")
        finally:
            connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    sock = bind_socket(listen, backlog=MAX_CONNECTIONS)
    sock.setblocking(False)
    server = await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST_HEAD)
    loop_task = asyncio.create_task(oracle.run(stop))
    log.info(
        "ready",
        extra={
            "fields": {
                "listen": str(listen),
                "address": to_checksum_address(oracle.address),
            }
        },
    )
    try:
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if loop_task in done:
            loop_task.result()  # the loop only ends on stop; surface a crash
        stop_task.cancel()
    finally:
        stop.set()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop_task
        if isinstance(listen, UnixAddress):
            with contextlib.suppress(OSError):
                Path(listen.path).unlink()
