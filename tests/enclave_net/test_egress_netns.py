"""The enclave emulated by a network namespace: no interface up, out only through a Unix socket
standing in for vsock, to the parent proxy (this process's namespace), to a local "exchange"."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.enclave_net._support import (
    CertAuthority,
    Enclave,
    HttpsExchange,
    ProxyProcess,
    cli,
    relay_args,
)
from tests.output_contract import check, check_error

pytestmark = pytest.mark.root

URL = "https://api.binance.com/api/v3/ticker/price?symbol=BTCUSDT"


def _fetch(enclave: Enclave, pki: CertAuthority, *mode: str) -> dict[str, object]:
    # No test here waits for a timeout (the failures are refusals and certificate errors), so
    # the budget only has to hold on a loaded machine: a fresh process's first handshake there
    # was seen to take over 5 s.
    done = enclave.run(
        cli("fetch", URL, *mode, "--ca-bundle", str(pki.ca_pem), "--json", "--timeout", "30"),
        timeout=300,
    )
    assert done.stdout, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    check("fetch" if done.returncode == 0 else "error", result)
    result["exit"] = done.returncode
    return result


def test_namespace_is_sealed(enclave: Enclave, binance: HttpsExchange) -> None:
    # The premise of every test here: from the "enclave", the exchange's TCP port is unreachable.
    probe = enclave.run(
        [
            "python3",
            "-c",
            (
                "import socket,sys\n"
                f"try: socket.create_connection(('127.0.0.1', {binance.port}), timeout=2)\n"
                "except OSError as e: print(e.errno); sys.exit(0)\n"
                "sys.exit(1)"
            ),
        ]
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "101"  # ENETUNREACH: lo is down, there is nothing else


def test_route_mode(
    enclave: Enclave,
    pki: CertAuthority,
    binance: HttpsExchange,
    sockdir: Path,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    listen = sockdir / "binance.sock"
    proxy = start_proxy(*relay_args(listen, "api.binance.com", binance.port))
    before = len(binance.sni)
    result = _fetch(enclave, pki, "--route", f"api.binance.com:443=unix:{listen}")
    assert result["exit"] == 0, result
    assert result["status"] == 200
    assert json.loads(str(result["body"])) == {
        "symbol": "BTCUSDT",
        "price": "64000.01000000",
        "host": "api.binance.com",
    }
    assert binance.sni[before:] == ["api.binance.com"]
    assert proxy.wait_for(lambda r: r.get("event") == "tunnel_open")[0]["mode"] == "route"


def test_connect_mode(
    enclave: Enclave,
    pki: CertAuthority,
    binance: HttpsExchange,
    sockdir: Path,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    listen = sockdir / "connect.sock"
    # The enclave asks for api.binance.com:443; the parent pins that to the local server.
    proxy = start_proxy(
        "--connect",
        f"unix:{listen}",
        "--allow",
        "api.binance.com:443",
        "--resolve",
        f"api.binance.com:443=127.0.0.1:{binance.port}",
        "--allow-private",
    )
    before = len(binance.sni)
    result = _fetch(enclave, pki, "--connect", f"unix:{listen}")
    assert result["exit"] == 0, result
    assert result["status"] == 200
    assert binance.sni[before:] == ["api.binance.com"]
    opened = proxy.wait_for(lambda r: r.get("event") == "tunnel_open")[0]
    assert (opened["mode"], opened["target"]) == ("connect", "api.binance.com:443")


def test_without_the_proxy_it_fails_and_says_why(
    enclave: Enclave, pki: CertAuthority, sockdir: Path
) -> None:
    result = _fetch(enclave, pki, "--route", f"api.binance.com:443=unix:{sockdir}/none.sock")
    assert result["exit"] == 1
    error = result["error"]
    assert isinstance(error, dict)
    assert error["code"] == "net.egress-connect"
    assert "no listener on parent" in error["message"]


def test_route_to_another_host_fails_certificate_verification(
    enclave: Enclave,
    pki: CertAuthority,
    kraken: HttpsExchange,
    sockdir: Path,
    start_proxy: Callable[..., ProxyProcess],
) -> None:
    # The parent wired the Binance port to Kraken (a typo in a unit file, or a hostile parent).
    listen = sockdir / "misrouted.sock"
    start_proxy(*relay_args(listen, "api.kraken.com", kraken.port))
    result = _fetch(enclave, pki, "--route", f"api.binance.com:443=unix:{listen}")
    assert result["exit"] == 1
    error = result["error"]
    assert isinstance(error, dict)
    assert error["code"] == "net.tls-verification"
    assert "Hostname mismatch" in error["message"]
    assert "routed to a different host" in error["message"]


def test_unrouted_host_is_refused_inside_the_enclave(
    enclave: Enclave, pki: CertAuthority, sockdir: Path
) -> None:
    listen = sockdir / "never.sock"
    done = enclave.run(
        cli(
            "fetch",
            "https://evil.example/",
            "--route",
            f"api.binance.com:443=unix:{listen}",
            "--json",
        )
    )
    check_error(json.loads(done.stdout), "net.no-route")
    assert not listen.exists()


def test_lo_up_helper(enclave: Enclave) -> None:
    code = (
        "from enclave_net import netif\n"
        "before = netif.interface_flags('lo')\n"
        "after = netif.bring_up('lo')\n"
        "print(hex(before), hex(after))\n"
    )
    done = enclave.run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    before, after = (int(x, 16) for x in done.stdout.split())
    assert not before & 0x1  # a fresh namespace, like an enclave: lo DOWN
    assert after & 0x1  # IFF_UP, set by the ioctl
    check = enclave.run(["ip", "-o", "addr", "show", "lo"])
    assert "127.0.0.1/8" in check.stdout  # the kernel added the address when lo came up
