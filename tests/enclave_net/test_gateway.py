"""The gateway forwards bytes, unchanged, both ways; it answers only when the enclave is gone."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_net.address import TcpAddress, UnixAddress
from enclave_net.gateway import Gateway, GatewayLimits
from tests.enclave_net._support import short_tempdir


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


async def _fake_enclave(path: Path, seen: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readuntil(b"\r\n\r\n")
        seen.append(data)
        body = bytes(range(256)) * 64  # binary, and bigger than one read
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


async def _request(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_bytes_pass_through_unchanged(sockdir: Path) -> None:
    async def main() -> None:
        seen: list[bytes] = []
        enclave = await _fake_enclave(sockdir / "enclave.sock", seen)
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0), enclave=UnixAddress(str(sockdir / "enclave.sock"))
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress) and gateway.bound.port != 0
        request = b"GET /v1/price/BTC-USD HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n\r\n"
        answers = await asyncio.gather(*(_request(gateway.bound.port, request) for _ in range(20)))
        body = bytes(range(256)) * 64
        for answer in answers:
            assert answer.endswith(body) and answer.startswith(b"HTTP/1.1 200 OK")
        assert seen == [request] * 20
        await gateway.close()
        enclave.close()
        await enclave.wait_closed()
        assert gateway.served == 20 and gateway.active == 0

    asyncio.run(main())


def test_enclave_down_is_a_json_503(sockdir: Path) -> None:
    async def main() -> None:
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0), enclave=UnixAddress(str(sockdir / "missing.sock"))
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress)
        answer = await _request(gateway.bound.port, b"GET /v1/health HTTP/1.1\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body)["error"]["code"] == "gateway.unavailable"
        await gateway.close()

    asyncio.run(main())


def test_idle_clients_are_cut(sockdir: Path) -> None:
    async def main() -> None:
        seen: list[bytes] = []
        enclave = await _fake_enclave(sockdir / "enclave.sock", seen)
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0),
            enclave=UnixAddress(str(sockdir / "enclave.sock")),
            limits=GatewayLimits(idle_timeout=0.3),
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress)
        with socket.create_connection(("127.0.0.1", gateway.bound.port), timeout=5) as sock:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n")  # and never finish the head
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(None, sock.recv, 100)
        assert data == b""  # closed by the gateway, nothing forged
        await gateway.close()
        enclave.close()
        await enclave.wait_closed()

    asyncio.run(main())


async def _counting_enclave(
    path: Path, accepted: list[int], *, answer: bool = True
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        await reader.readuntil(b"\r\n\r\n")
        if answer:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


def test_idle_connections_never_reach_the_enclave(sockdir: Path) -> None:
    async def main() -> None:
        accepted: list[int] = []
        enclave = await _counting_enclave(sockdir / "enclave.sock", accepted)
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0), enclave=UnixAddress(str(sockdir / "enclave.sock"))
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress)
        idle = [await asyncio.open_connection("127.0.0.1", gateway.bound.port) for _ in range(64)]
        while gateway.active < len(idle):
            await asyncio.sleep(0.01)
        answer = await _request(gateway.bound.port, b"GET /v1/health HTTP/1.1\r\n\r\n")
        assert answer.endswith(b"\r\n\r\nok")
        assert len(accepted) == 1  # only the connection that sent a request was relayed
        for _, writer in idle:
            writer.close()
        await gateway.close()
        enclave.close()
        await enclave.wait_closed()

    asyncio.run(main())


def _head_and_error(answer: bytes) -> tuple[bytes, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    error: dict[str, str] = json.loads(body)["error"]
    return head, error


def test_over_capacity_reads_the_request_then_answers_503_with_retry_after(sockdir: Path) -> None:
    async def main() -> None:
        accepted: list[int] = []
        enclave = await _counting_enclave(sockdir / "enclave.sock", accepted)
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0),
            enclave=UnixAddress(str(sockdir / "enclave.sock")),
            limits=GatewayLimits(max_connections=2),
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress)
        idle = [await asyncio.open_connection("127.0.0.1", gateway.bound.port) for _ in range(2)]
        while gateway.active < len(idle):
            await asyncio.sleep(0.01)
        # A request head bigger than one read, in pieces: all of it is read before the answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.bound.port)
        writer.write(b"GET /v1/health HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 20_000 + b"\r\n")
        await writer.drain()
        writer.write(b"Host: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, error = _head_and_error(answer)
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head, head
        assert error == {"code": "gateway.unavailable", "message": "gateway over capacity"}
        assert accepted == []
        for _, idle_writer in idle:
            idle_writer.close()
        await gateway.close()
        enclave.close()
        await enclave.wait_closed()

    asyncio.run(main())


def test_an_enclave_that_closes_without_answering_gives_502(sockdir: Path) -> None:
    async def main() -> None:
        accepted: list[int] = []
        enclave = await _counting_enclave(sockdir / "enclave.sock", accepted, answer=False)
        gateway = Gateway(
            listen=TcpAddress("127.0.0.1", 0), enclave=UnixAddress(str(sockdir / "enclave.sock"))
        )
        await gateway.start()
        assert isinstance(gateway.bound, TcpAddress)
        answer = await _request(gateway.bound.port, b"GET /v1/health HTTP/1.1\r\n\r\n")
        head, error = _head_and_error(answer)
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert error["code"] == "gateway.bad_gateway" and accepted == [1]
        await gateway.close()
        enclave.close()
        await enclave.wait_closed()

    asyncio.run(main())
