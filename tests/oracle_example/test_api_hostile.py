"""The enclave API behind the gateway under hostile clients: odd targets get a 400, idle
connections hold no enclave slot, and every one of many concurrent clients gets an HTTP answer."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from oracle_example.demo import OracleStack
from tests.oracle_example.oracle_stack import oracle_stack, wait_until


@pytest.fixture(scope="module")
def stack() -> Iterator[OracleStack]:
    with oracle_stack() as running:
        yield running


def _gateway(stack: OracleStack) -> tuple[str, int]:
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(stack: OracleStack, request: bytes) -> bytes:
    with socket.create_connection(_gateway(stack), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v1/price/BTC-USD?domain=%C2%B2", "price.domain"),  # '²'.isdigit() is True
        ("/v1/price/BTC-USD?domain=%D9%A3", "price.domain"),  # Arabic-Indic 3: int() takes it
        ("/v1/price/BTC-USD?domain=", "price.domain"),
        ("/v1/attestation?nonce=", "attestation.nonce"),  # not the cached document
        ("//[::1/v1/health", "http.target"),
        ("http://[/v1/health", "http.target"),
        ("*", "http.target"),
    ],
)
def test_odd_targets_get_a_400(stack: OracleStack, target: str, code: str) -> None:
    answer = _raw(stack, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, body = _status_and_body(answer)
    assert status == 400, body
    assert body["error"]["code"] == code  # type: ignore[index]
    assert "API handler failed" not in stack.enclave_log.read_text()


def test_absolute_and_double_slash_targets(stack: OracleStack) -> None:
    # RFC 9112 §3.2.2: absolute-form is accepted; "//x" in origin-form is a path, not a host.
    status, body = _status_and_body(
        _raw(stack, b"GET http://gateway.test/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    assert status == 200 and "address" in body
    status, body = _status_and_body(_raw(stack, b"GET //v1/health HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 404, body


def test_idle_connections_hold_no_enclave_slot(stack: OracleStack) -> None:
    from oracle_example.api import MAX_CLIENTS

    idle = [socket.create_connection(_gateway(stack), timeout=10) for _ in range(MAX_CLIENTS)]
    try:
        wait_until(lambda: stack.gateway is not None and stack.gateway.active >= len(idle))
        # All the idle connections are accepted and open: a real request is still served.
        for path in (b"/v1/price/BTC-USD", b"/v1/health"):
            status, body = _status_and_body(
                _raw(stack, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            )
            assert status == 200, body
    finally:
        for sock in idle:
            sock.close()


async def _one_client(host: str, port: int, index: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    path = "/v1/health" if index % 2 else "/v1/price/BTC-USD"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def test_every_one_of_200_concurrent_clients_gets_an_http_answer(stack: OracleStack) -> None:
    async def crowd() -> list[bytes | BaseException]:
        host, port = _gateway(stack)
        return await asyncio.gather(
            *(_one_client(host, port, i) for i in range(200)), return_exceptions=True
        )

    answers = asyncio.run(crowd())
    errors = [a for a in answers if isinstance(a, BaseException)]
    assert errors == []  # no reset, no refused connection
    statuses: dict[int, int] = {}
    for answer in answers:
        assert isinstance(answer, bytes)
        status, body = _status_and_body(answer)  # never an empty reply
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 503), body
        if status == 503:
            head = answer.partition(b"\r\n\r\n")[0].lower()
            assert b"\r\nretry-after: " in head, head
    assert statuses.get(200, 0) > 0, statuses
