from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_net.address import (
    HostPort,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
    parse_host_port,
    sockaddr,
)
from enclave_net.errors import AddressError, EnclaveNetError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vsock:3:8443", VsockAddress(3, 8443)),
        ("vsock:4294967295:8000", VsockAddress(2**32 - 1, 8000)),
        ("unix:/run/egress.sock", UnixAddress("/run/egress.sock")),
        ("unix:relative=odd.sock", UnixAddress("relative=odd.sock")),
        ("tcp:127.0.0.1:3128", TcpAddress("127.0.0.1", 3128)),
        ("tcp:[::1]:443", TcpAddress("::1", 443)),
        ("tcp:API.Binance.COM:443", TcpAddress("api.binance.com", 443)),
    ],
)
def test_parse(text: str, expected: object) -> None:
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected vsock"),
        ("3:8443", "unknown scheme"),
        ("vsock:3", "vsock:CID:PORT"),
        ("vsock:x:1", "CID must be a decimal"),
        ("vsock:3:+1", "port must be a decimal"),
        ("vsock:3:4294967296", "outside"),
        ("unix:", "empty"),
        ("unix:" + "a" * 108, "longer than 107"),
        ("unix:a\0b", "NUL"),
        ("tcp:host", "HOST:PORT"),
        ("tcp:h:65536", "outside"),
        ("tcp:::1:443", "brackets"),
        ("tcp:[::1]443", "IPV6"),
        ("tcp:bad_host!:1", "not a valid host"),
        ("tcp:-a.example:1", "not a valid host"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)


def test_host_port() -> None:
    assert parse_host_port("api.binance.com:443") == HostPort("api.binance.com", 443)
    assert str(parse_host_port("[2001:db8::1]:443")) == "[2001:db8::1]:443"
    with pytest.raises(AddressError):
        parse_host_port("api.binance.com:0")


def test_tcp_names_are_never_resolved() -> None:
    with pytest.raises(AddressError, match="no DNS"):
        sockaddr(TcpAddress("api.binance.com", 443))


@given(st.text(max_size=80))
def test_only_typed_errors_escape(text: str) -> None:
    try:
        address = parse_address(text)
    except EnclaveNetError:
        return
    assert parse_address(str(address)) == address


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_vsock_round_trip(cid: int, port: int) -> None:
    assert parse_address(str(VsockAddress(cid, port))) == VsockAddress(cid, port)
