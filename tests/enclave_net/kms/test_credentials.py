"""The parent's credentials endpoint and the enclave's refreshing client, over a Unix socket
standing in for vsock."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_net.address import parse_address
from enclave_net.kms.credentials import (
    Credentials,
    CredentialsServer,
    ParentCredentials,
    botocore_chain,
)
from enclave_net.kms.errors import CredentialsError
from tests.enclave_net.kms._support import run, short_tempdir

START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def directory() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Rotating:
    """A provider whose credentials change every call, like a role session being renewed."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Credentials:
        self.calls += 1
        return Credentials(
            f"AKIAROLE{self.calls:04d}", f"secret-{self.calls}", f"token-{self.calls}"
        )


def test_the_enclave_refreshes_before_expiry(directory: Path) -> None:
    address = parse_address(f"unix:{directory}/creds.sock")
    clock = Clock()
    provider = Rotating()
    with CredentialsServer(address, provider, clock=clock) as server:
        enclave = ParentCredentials(address, clock=clock)

        first = run(enclave.get())
        assert first.access_key_id == "AKIAROLE0001" and first.session_token == "token-1"
        assert first.expiration == START + dt.timedelta(minutes=5)
        clock.now += dt.timedelta(minutes=3)
        assert run(enclave.get()) is not None and server.served == 1  # still cached
        clock.now += dt.timedelta(minutes=1, seconds=1)  # within the 60 s margin of expiry
        second = run(enclave.get())
        assert second.access_key_id == "AKIAROLE0002" and server.served == 2


def test_the_parent_never_promises_past_the_real_expiry(directory: Path) -> None:
    clock = Clock()
    soon = START + dt.timedelta(minutes=2)
    server = CredentialsServer(
        parse_address(f"unix:{directory}/c.sock"),
        lambda: Credentials("AKIA", "s", "t", soon),
        clock=clock,
    )
    assert server.answer().expiration == soon


def test_credentials_about_to_expire_are_refused(directory: Path) -> None:
    address = parse_address(f"unix:{directory}/creds.sock")
    clock = Clock()
    expiring = START + dt.timedelta(seconds=30)
    server = CredentialsServer(
        address, lambda: Credentials("AKIA", "s", "t", expiring), clock=clock
    )
    with server, pytest.raises(CredentialsError, match="refresh margin"):
        run(ParentCredentials(address, clock=clock).get())


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"not json", "non-JSON"),
        (b"[]", "other than an object"),
        (b'{"AccessKeyId": "A"}', "lacks"),
        (b'{"AccessKeyId": "A", "SecretAccessKey": "S", "Token": 5}', "non-string Token"),
        (
            b'{"AccessKeyId": "A", "SecretAccessKey": "S", "Expiration": "2026-12-01T12:00:00"}',
            "no time zone",
        ),
        (b"x" * 20000, "over"),
    ],
)
def test_bad_answers_are_typed_errors(directory: Path, answer: bytes, complaint: str) -> None:
    path = directory / f"bad-{len(answer)}.sock"
    thread = serve_once(path, answer)
    with pytest.raises(CredentialsError, match=complaint):
        run(ParentCredentials(parse_address(f"unix:{path}")).get())
    thread.join(timeout=5)


def test_no_endpoint_is_a_typed_error(directory: Path) -> None:
    with pytest.raises(CredentialsError, match="credentials endpoint"):
        run(ParentCredentials(parse_address(f"unix:{directory}/absent.sock")).get())


def test_nothing_secret_in_reprs_or_logs(directory: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    address = parse_address(f"unix:{directory}/creds.sock")
    with CredentialsServer(address, Rotating()) as server:
        got = run(ParentCredentials(address).get())
        text = caplog.text + repr(got) + repr(server)
    for secret in (got.access_key_id, got.secret_access_key, str(got.session_token)):
        assert secret not in text


def test_botocore_chain_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment provider is the first of botocore's chain (the parent may also use a
    # profile or its instance role; those need an AWS account to test).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-environment")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-environment")
    got = botocore_chain()()
    assert (got.access_key_id, got.secret_access_key, got.session_token) == (
        "AKIAFROMENVIRONMENT",
        "secret-from-environment",
        "token-from-environment",
    )
