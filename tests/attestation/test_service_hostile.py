"""The verifier service against hostile clients: one test per attack that once got through.

In-process tests drive the ASGI app (Starlette's TestClient, or raw ASGI messages); the
connection-level ones run `nitro-attest serve` in a subprocess on loopback with small limits,
because the bounds live in the server (`attestation.service._server`), not in the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from attestation.service import ConfigError, _app, create_app, parse_config
from attestation.service._server import connection_budget
from attestation.testing import DocumentFactory, default_pcrs
from tests.attestation.test_chain_property import AT, signed_document
from tests.output_contract import check_error

REPO = Path(__file__).resolve().parents[2]
CBOR = {"content-type": "application/cbor"}
FACTORY = DocumentFactory.create(seed=12, not_before=datetime(2025, 6, 1, 8, 0, tzinfo=UTC))
PCRS = default_pcrs(FACTORY.pki.instance_id)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _client(tmp_path: Path, policies: dict[str, Any], root_pem: bytes, now: datetime) -> TestClient:
    (tmp_path / "root.pem").write_bytes(root_pem)
    config = parse_config(
        {"service": {"trust_roots": ["root.pem"]}, "policies": policies}, base_dir=tmp_path
    )
    return TestClient(create_app(config, clock=_Clock(now)), raise_server_exceptions=True)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    policies = {
        "app": {"pcrs": {"1": PCRS[1].hex()}},
        "debug-ok": {
            "pcr_sets": [{"1": "ab" * 48}, {"1": PCRS[1].hex()}],
            "allow_debug": True,
        },
        "debug-refused": {"pcr_sets": [{"1": "ab" * 48}, {"1": PCRS[1].hex()}]},
    }
    now = FACTORY.timestamp + timedelta(seconds=5)
    with _client(tmp_path, policies, FACTORY.root_pem, now) as test_client:
        yield test_client


# --- the app ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/verify/", "/healthz/", "/metrics/"])
def test_no_redirect_built_from_the_host_header(client: TestClient, path: str) -> None:
    response = client.get(path, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code in (404, 405)
    assert "location" not in response.headers


@pytest.mark.parametrize(
    "body",
    [
        b'{"document": "AA==", "policy": "app", "nonce": NaN}',
        b'{"document": "AA==", "policy": "app", "at": Infinity}',
        b'{"document": "AA==", "policy": "app", "x": -Infinity}',
        '{"document": "AA==", "policy": "app"}'.encode("utf-16"),
        '{"document": "AA==", "policy": "app"}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"document": "AA==", "policy": "app"}',
        b'{"document": "AA==", "policy": "app\xff"}',
    ],
    ids=["nan", "infinity", "minus-infinity", "utf-16", "utf-32", "bom", "latin-1"],
)
def test_json_is_strict(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/verify", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "request.json")


def test_too_many_headers_get_431_in_the_error_shape(client: TestClient) -> None:
    # Whatever server runs the app: the app's own bound answers in the one error shape.
    headers = {f"x-filler-{i}": "1" for i in range(150)}
    response = client.get("/healthz", headers=headers)
    assert response.status_code == 431
    error = check_error(response.json(), "request.head-too-large")
    assert error["hint"]


def test_pcr_sets_with_allow_debug(client: TestClient) -> None:
    debug = FACTORY.document(pcrs={**PCRS, 0: bytes(48)})
    ok = client.post("/v1/verify?policy=debug-ok", content=debug, headers=CBOR)
    assert ok.status_code == 200, ok.text
    assert ok.json()["debug"] is True
    refused = client.post("/v1/verify?policy=debug-refused", content=debug, headers=CBOR)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "policy.debug")


def test_undecodable_name_is_a_coded_refusal_not_a_500(tmp_path: Path) -> None:
    document, root_pem = signed_document("leaf", "utf8-overlong", PCRS)
    policies = {"app": {"pcrs": {"1": PCRS[1].hex()}}}
    with _client(tmp_path, policies, root_pem, AT) as test_client:
        response = test_client.post("/v1/verify?policy=app", content=document, headers=CBOR)
    assert response.status_code == 422
    body = response.json()
    assert body["error"]["code"] == "chain.certificate-malformed"
    assert not re.search(r"ParseError|\{ kind|location|<Certificate", body["error"]["message"])


def test_client_disconnect_mid_body_is_its_own_outcome(client: TestClient) -> None:
    app = client.app
    document = FACTORY.document()
    messages: Iterator[dict[str, Any]] = iter(
        [
            {"type": "http.request", "body": document[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/verify",
        "raw_path": b"/v1/verify",
        "root_path": "",
        "query_string": b"policy=app",
        "headers": [
            (b"content-type", b"application/cbor"),
            (b"content-length", str(len(document)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent == []  # nobody to answer
    metrics = client.get("/metrics").text
    assert 'status="499",outcome="client_disconnected"' in metrics
    assert 'status="500"' not in metrics


def test_several_workers_are_not_documented() -> None:
    # Each worker keeps its own counters, so scrapes through one port jump between them and
    # counters go backwards: one process per port is the documented way to scale.
    for text in (
        (REPO / "docs" / "deployment.md").read_text(),
        _app.__doc__ or "",
        _app.app_from_environment.__doc__ or "",
    ):
        assert "--workers" not in text


# --- the server (subprocess) --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    def __init__(self, tmp_path: Path, nofile: int | None = None, **service: object) -> None:
        config = tmp_path / "service.toml"
        settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in service.items())
        config.write_text(
            f"[service]\naccess_log = false\n{settings}"
            f'[policies.app]\npcrs = {{ 1 = "{PCRS[1].hex()}" }}\n'
        )
        self.port = _free_port()

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log = (tmp_path / "server.log").open("wb")
        listen = ["--listen", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "attestation.service", "--config", str(config), *listen],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=limit,
        )
        deadline = time.monotonic() + 30
        while self.get("/healthz", timeout=1) is None:
            assert self.process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.1)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=20)

    def get(self, path: str, *, timeout: float = 20) -> bytes | None:
        """The whole answer to a fresh `GET path`, or None if the connection failed."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(
                    f"GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode()
                )
                return _read_all(sock)
        except OSError:
            return None

    def metric(self, series: str) -> int:
        """The value of one series of `/metrics` (0 while it does not exist)."""
        answer = self.get("/metrics")
        assert answer is not None
        for line in answer.decode().splitlines():
            if line.startswith(series + " "):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def requests_served(self, route: str) -> int:
        answer = self.get("/metrics")
        assert answer is not None
        total = 0
        for line in answer.decode().splitlines():
            if line.startswith(f'nitro_attest_requests_total{{route="{route}"'):
                total += int(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        self.log.close()


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after data counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path, max_connections=8, head_timeout_seconds=1, body_timeout_seconds=1)
    yield server
    server.stop()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: t\r\n" + b"a: b\r\n" * 4_000 + b"\r\n",
    ],
    ids=["long-line", "many-headers"],
)
def test_oversized_heads_are_refused(served: Served, head: bytes) -> None:
    with served.connect() as sock:
        sock.sendall(head)
        answer = _read_all(sock)
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:80]


def test_an_idle_connection_gets_408_and_is_closed(served: Served) -> None:
    with served.connect() as sock:
        answer = _read_all(sock)  # bounded by the socket's 20 s timeout
    assert answer.startswith(b"HTTP/1.1 408")
    assert served.metric('nitro_attest_connections_closed_total{reason="head_timeout"}') == 1


def test_a_trickled_head_is_cut_at_the_deadline(served: Served) -> None:
    # One byte every 0.1 s would restart a per-read timeout forever; a deadline ends it.
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(300):  # 30 s at most: far past the 1 s deadline
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
            try:
                sock.sendall(b"x")
            except OSError:
                break
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]


def test_a_trickled_body_is_cut_and_counted(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(
            b"POST /v1/verify?policy=app HTTP/1.1\r\nhost: t\r\n"
            b"content-type: application/cbor\r\ncontent-length: 5000\r\n\r\n" + b"\x00" * 10
        )
        answer = _read_all(sock)
    assert answer == b""  # closed without an answer: the body never came
    assert served.metric('nitro_attest_connections_closed_total{reason="body_timeout"}') == 1
    deadline = time.monotonic() + 20
    while served.requests_served("/v1/verify") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    metrics = served.get("/metrics")
    assert metrics is not None
    assert b'route="/v1/verify",status="499",outcome="client_disconnected"' in metrics


def test_slow_connections_cannot_lock_out_a_fresh_one(served: Served) -> None:
    idle = [served.connect() for _ in range(20)]  # more than max_connections = 8
    try:
        answer = served.get("/healthz")
        assert answer is not None and answer.startswith(b"HTTP/1.1 200")
        # 20 idle and the fresh one against a cap of 8: at least 13 of the idle were closed,
        # evicted (or, on a machine slow enough to take a second here, timed out first).
        closed = sum(
            served.metric(f'nitro_attest_connections_closed_total{{reason="{reason}"}}')
            for reason in ("evicted", "head_timeout")
        )
        assert closed >= 13
    finally:
        for sock in idle:
            sock.close()


def test_connections_never_exhaust_the_descriptor_limit(tmp_path: Path) -> None:
    # 256 descriptors: the service lowers its connection cap (default 1000) to fit, so 300
    # connections that never send anything do not keep a fresh request out.
    server = Served(tmp_path, nofile=256, head_timeout_seconds=60)
    idle = []
    try:
        idle = [server.connect() for _ in range(300)]
        answer = server.get("/healthz")
        assert answer is not None and answer.startswith(b"HTTP/1.1 200")
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_pipelined_requests_are_not_answered_into_memory(served: Served) -> None:
    # 20,000 pipelined requests for a ~4 KB answer, never read: the server must stop
    # answering (and reading) once the socket buffers are full, not queue 80 MB of answers.
    sent = 20_000
    request = b"GET /openapi.json HTTP/1.1\r\nhost: t\r\n\r\n"
    with served.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        with contextlib.suppress(OSError):  # blocked (timeout) or closed by the server
            for _ in range(sent // 1000):
                sock.sendall(request * 1000)
    answered = served.requests_served("/openapi.json")
    assert answered < sent // 4, answered


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_connections", 0),
        ("max_connections", True),
        ("max_connections", 70_000),
        ("head_timeout_seconds", 0),
        ("head_timeout_seconds", True),
        ("body_timeout_seconds", 301),
        ("body_timeout_seconds", "30"),
    ],
)
def test_connection_bounds_are_validated(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config({"service": {key: value}, "policies": {"a": {"pcrs": {"0": "ab" * 48}}}})


def test_connection_budget_fits_the_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_budget(10) == 10
    if soft != resource.RLIM_INFINITY:
        assert connection_budget(10 * soft) <= soft - 128
