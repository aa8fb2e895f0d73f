"""The enclave app: boot rules in process, then end to end against local HTTPS exchanges.

End-to-end tests run the real stack (emulator, replay exchanges with a test CA, the parent
egress proxy, the enclave as a child process, the gateway). As root the enclave sits in a
network namespace with no interface up; otherwise it is a plain process with DNS guarded off.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import coincurve
import pytest

from attestation import AttestationDocument
from enclave_net.egress import EgressConfig
from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator
from oracle_example import _cli
from oracle_example.aggregate import aggregate_feed
from oracle_example.binding import Binding
from oracle_example.client import GetResult
from oracle_example.config import OracleConfig
from oracle_example.demo import OracleStack
from oracle_example.errors import ClientError, EnclaveBootError
from oracle_example.eth import address_of, to_checksum_address
from oracle_example.oracle import ROUND_ID_SHIFT, EnclaveOptions, Oracle, expected_pcr16
from oracle_example.replay import Rule
from oracle_example.report import OracleError, OracleErrorCode
from tests.enclave_net._support import REPO, short_tempdir
from tests.oracle_example.chain_support import quotes
from tests.oracle_example.oracle_stack import oracle_stack, outcomes, wait_until

# --- boot, in process -----------------------------------------------------------------------------


@pytest.fixture
def emulator_at() -> Iterator[tuple[Emulator, Path]]:
    directory = short_tempdir()
    emulator = Emulator(seed=3, random_source=lambda n: bytes([0x42]) * n)
    server = EmulatorServer(directory / "nsm.sock", emulator)
    server.serve_in_thread()
    try:
        yield emulator, directory / "nsm.sock"
    finally:
        server.shutdown()
        server.server_close()
        directory.rmdir()


def _options(production: bool) -> EnclaveOptions:
    return EnclaveOptions(
        config=OracleConfig(),
        egress=EgressConfig.from_strings(routes=["api.binance.com:443=unix:/nonexistent"]),
        listen=__import__("enclave_net.address").address.parse_address("unix:/nonexistent"),
        production=production,
    )


def test_production_refuses_the_emulator(emulator_at: tuple[Emulator, Path]) -> None:
    _, path = emulator_at
    with Nsm.emulator(path) as nsm, pytest.raises(EnclaveBootError, match="refuses the NSM"):
        Oracle(nsm, _options(True), emulated=True).boot()


def test_production_refuses_a_debug_pcr0() -> None:
    directory = short_tempdir()
    server = EmulatorServer(directory / "nsm.sock", Emulator(seed=4, debug=True))
    server.serve_in_thread()
    try:
        # Told it is a real device, the oracle still refuses an all-zero PCR0.
        with (
            Nsm.emulator(directory / "nsm.sock") as nsm,
            pytest.raises(EnclaveBootError, match="debug mode"),
        ):
            Oracle(nsm, _options(True), emulated=False).boot()
    finally:
        server.shutdown()
        server.server_close()
        directory.rmdir()


def test_boot_binds_key_config_and_pcr16(emulator_at: tuple[Emulator, Path]) -> None:
    emulator, path = emulator_at
    config = OracleConfig()
    with Nsm.emulator(path) as nsm:
        oracle = Oracle(nsm, _options(False), emulated=True)
        oracle.boot()
        # The key is the NSM's randomness (this emulator answers 0x42 bytes).
        key = coincurve.PrivateKey(bytes([0x42]) * 32)
        assert oracle.public_key == key.public_key.format(compressed=False)
        assert oracle.address == address_of(oracle.public_key)
        # PCR16 = SHA384(0^48 || configHash), locked: a second extend is refused.
        state = nsm.describe_pcr(16)
        assert state.locked and state.data == expected_pcr16(config) == oracle.pcr16
        assert emulator.pcr(16) == oracle.pcr16
        assert not hasattr(oracle, "key") and not hasattr(oracle, "private_key")
        document = AttestationDocument.parse(oracle._document)
        assert document.public_key == oracle.public_key
        assert document.user_data is not None
        binding = Binding.decode(document.user_data)
        assert binding.address == oracle.address
        assert binding.config_hash == config.config_hash
        assert binding.domains_hash == config.domains_hash
        # Booting twice on one NSM is refused: PCR16 is no longer fresh.
        with pytest.raises(EnclaveBootError, match="PCR16"):
            Oracle(nsm, _options(False), emulated=True).boot()


def test_round_ids_count_per_feed_from_the_attested_boot_time(
    emulator_at: tuple[Emulator, Path],
) -> None:
    _, path = emulator_at
    with Nsm.emulator(path) as nsm:
        oracle = Oracle(nsm, _options(False), emulated=True)
        oracle.boot()
        booted = AttestationDocument.parse(oracle._document).timestamp
        base = int(booted.timestamp()) << ROUND_ID_SHIFT
        now = _dt.datetime.now(_dt.UTC)
        for symbol in ("BTC/USD", "BTC/USD", "ETH/USD"):
            oracle._publish(aggregate_feed(oracle.config, symbol, quotes(symbol, now), now=now))
            oracle._publish(aggregate_feed(oracle.config, symbol, [], now=now))  # an error round
        ids = {f: oracle.report(f).message.round_id for f in ("BTC/USD", "ETH/USD")}  # type: ignore[union-attr]
        # Each feed counts on its own (an OracleError is a round too); the next boot, a second
        # or more later, starts above anything this boot can reach.
        assert ids == {"BTC/USD": base + 3, "ETH/USD": base + 1}


# --- end to end -----------------------------------------------------------------------------------


def _eth_digest(typed: dict[str, object]) -> bytes:
    from eth_account.messages import encode_typed_data
    from eth_utils.crypto import keccak as eth_keccak

    signable = encode_typed_data(full_message=typed)
    return bytes(eth_keccak(b"\x19" + signable.version + signable.header + signable.body))


@pytest.mark.crosscheck
def test_verified_reports_and_the_api() -> None:
    from eth_account import Account

    with oracle_stack() as stack:
        health = stack.health()
        assert health["mode"] == "development" and health["nsm"] == "emulator"
        for feed in ("BTC/USD", "ETH/USD"):
            result = stack.get(feed)
            assert result.verified is not None, feed
            assert result.verified.message.num_sources == 4
            assert set(outcomes(result.report_json).values()) == {"used"}
            # eth-account computes the same digest, and recovers the attested address.
            typed = result.report_json["typedData"]
            digest = _eth_digest(typed)
            assert digest == result.verified.report.digest
            signature = bytes.fromhex(result.report_json["signature"][2:])
            recovered = Account._recover_hash(digest, signature=signature)
            assert recovered == to_checksum_address(result.verified.address) == health["address"]
        # Path spellings of a feed, and JSON errors with bounded requests.
        host, port = stack.gateway_url.removeprefix("http://").split(":")

        def raw(request: bytes) -> tuple[int, dict[str, object]]:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), json.loads(body)

        for path in ("/v1/price/BTC-USD", "/v1/price/BTC%2FUSD", "/v1/price/BTC/USD"):
            status, body = raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 200 and body["feed"] == "BTC/USD"
        cases = [
            (b"GET /v1/price/DOGE-USD HTTP/1.1\r\nHost: x\r\n\r\n", 404, "price.unknown_feed"),
            # every round priced: no refusal to serve beside the price
            (b"GET /v1/error/BTC-USD HTTP/1.1\r\nHost: x\r\n\r\n", 404, "error.none"),
            (b"GET /v1/attestation?nonce=zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "attestation.nonce"),
            (
                b"GET /v1/attestation?nonce=" + b"ab" * 65 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                400,
                "attestation.nonce",
            ),
            (b"GET /v1/health?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "http.query"),
            (b"POST /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 405, "http.method"),
            (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "http.not_found"),
            (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, None),
            (b"GARBAGE\r\n\r\n", 400, "http.bad_request"),
        ]
        for request, want, code in cases:
            status, body = raw(request)
            assert status == want, (request[:40], body)
            assert isinstance(body.get("error"), dict)
            if code is not None:
                assert body["error"]["code"] == code  # type: ignore[index]


def test_thin_data_gives_a_signed_oracle_error() -> None:
    with oracle_stack() as stack:
        assert stack.replay is not None
        # Binance answers 451 from US regions, OKX drops: 2 of 4 sources left for BTC/USD.
        stack.replay.add_rule(Rule(host="api.binance.com", file="binance_451_restricted.json"))
        stack.replay.add_rule(Rule(host="www.okx.com", drop=True))

        def refused() -> GetResult | None:
            try:
                result = stack.get("BTC/USD", error=True)
            except ClientError:  # 404 error.none: the latest round still priced
                return None
            return result if result.refusal is not None else None

        result: GetResult = wait_until(refused)
        # The last good price is still served (until its expiresAt), beside the refusal.
        price = stack.get("BTC/USD")
        assert price.verified is not None
        assert (
            price.verified.message.round_id < result.report_json["typedData"]["message"]["roundId"]
        )
        assert result.verified is None
        assert _error_code(result) == OracleErrorCode.TOO_FEW_SOURCES
        assert outcomes(result.report_json) == {
            "binance": "blocked",
            "coinbase": "used",
            "kraken": "used",
            "okx": "failed",
        }
        assert "2 usable source(s), 3 required" in result.report_json["detail"]
        # a signed refusal that verifies against the attested key, carrying the quorum
        assert result.refusal is not None
        error = result.refusal.error
        assert isinstance(error, OracleError) and (error.num_sources, error.min_sources) == (2, 3)


def _until_outcome(stack: OracleStack, source: str, outcome: str) -> GetResult:
    def check() -> GetResult | None:
        result = stack.get("BTC/USD")
        return result if outcomes(result.report_json)[source] == outcome else None

    found: GetResult = wait_until(check)
    return found


def _error_code(result: GetResult) -> int:
    assert result.refusal is not None
    error = result.refusal.error
    assert isinstance(error, OracleError)
    return error.code


def test_a_stale_source_is_dropped() -> None:
    with oracle_stack() as stack:
        assert stack.replay is not None
        stack.replay.add_rule(Rule(host="www.okx.com", age=_dt.timedelta(seconds=120)))
        result = _until_outcome(stack, "okx", "stale")
        assert result.verified is not None and result.verified.message.num_sources == 3
        line = next(s for s in result.report_json["sources"] if s["source"] == "okx")
        assert "s old" in line["detail"]


def test_429_is_honoured_then_the_source_comes_back() -> None:
    with oracle_stack() as stack:
        assert stack.replay is not None
        stack.replay.add_rule(
            Rule(
                host="api.binance.com",
                file="binance_429_rate_limit.json",
                headers={"retry-after": "1"},
                count=2,  # the BTC and the ETH request of one round
            )
        )
        limited = _until_outcome(stack, "binance", "rate_limited")
        assert limited.verified is not None and limited.verified.message.num_sources == 3
        back = _until_outcome(stack, "binance", "used")
        assert back.verified is not None and back.verified.message.num_sources == 4
        # Retry-After honoured: no Binance request within 1 s of the last 429.
        binance = [r for r in stack.replay.requests if r.host == "api.binance.com"]
        limited_at = max(r.at for r in binance if r.status == 429)
        after = [r.at for r in binance if r.at > limited_at]
        assert after and min(after) - limited_at >= 0.95, (limited_at, after[:3])


def test_451_disables_the_source_for_the_session() -> None:
    with oracle_stack() as stack:
        assert stack.replay is not None
        stack.replay.add_rule(Rule(host="api.binance.com", file="binance_451_restricted.json"))
        wait_until(lambda: stack.health()["sources"]["binance"]["disabled"])
        asked = stack.replay.count("api.binance.com")
        rounds = stack.health()["rounds"]
        wait_until(lambda: stack.health()["rounds"] >= rounds + 3)
        assert stack.replay.count("api.binance.com") == asked  # never asked again
        result = stack.get("BTC/USD")
        assert result.verified is not None and result.verified.message.num_sources == 3
        assert outcomes(result.report_json)["binance"] == "blocked"
        log = stack.enclave_log.read_text()
        assert log.count("source binance DISABLED for this session: HTTP 451") == 1


def test_clock_skew_signs_oracle_errors_instead_of_prices() -> None:
    with oracle_stack(enclave_args=["--clock-offset", "10"]) as stack:
        for feed in ("BTC/USD", "ETH/USD"):
            # The enclave clock runs 10 s ahead (beyond the consumer's 5 s bound); the consumer's
            # clock agrees with the NSM. The refusal carries the attested time, so it verifies
            # at the consumer's own, correct time.
            before = int(_dt.datetime.now(_dt.UTC).timestamp())
            result = stack.get(feed)
            assert result.refusal is not None
            assert _error_code(result) == OracleErrorCode.CLOCK_UNTRUSTED
            assert "from the attested time" in result.report_json["detail"]
            error = result.refusal.error
            assert isinstance(error, OracleError)
            assert before - 10 <= error.timestamp <= before + 2  # not 10 s ahead
            assert error.expires_at == error.timestamp + 120
        assert stack.health()["clock"]["ok"] is False
        assert stack.replay is not None and stack.replay.requests == []  # no prices fetched


def test_enclave_stops_cleanly_and_removes_its_socket() -> None:
    with oracle_stack() as stack:
        enclave = stack.enclave
        assert enclave is not None
        socket_path = stack.enclave_socket
        assert socket_path.exists()
    assert enclave.returncode == 0
    assert not socket_path.exists()


def test_no_dns_lookup_happens_in_the_enclave() -> None:
    with oracle_stack() as stack:
        time.sleep(0.7)  # a couple of rounds
        log = stack.enclave_log.read_text()
    assert "DNS lookup" not in log
    assert "Traceback" not in log


# --- command line ---------------------------------------------------------------------------------


def _enclave_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracle_example._cli", "enclave", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_cli_production_refuses_the_emulator_and_a_missing_device() -> None:
    done = _enclave_cli("--nsm", "unix:/nonexistent/nsm.sock")
    assert done.returncode == 2
    assert "production mode refuses the NSM emulator" in done.stderr
    if not Path("/dev/nsm").exists():
        done = _enclave_cli("--listen", "unix:/nonexistent/api.sock")
        assert done.returncode == 2
        assert "/dev/nsm does not exist" in done.stderr


def test_nitro_oracle_has_only_the_app_commands() -> None:
    parser = _cli.build_parser()
    for command in ("enclave", "get", "doctor", "demo"):
        args = parser.parse_args(
            {
                "enclave": ["enclave", "--dev"],
                "get": ["get", "BTC/USD", "--gateway", "http://127.0.0.1:8080"],
                "doctor": ["doctor", "--max-source-age", "60"],
                "demo": ["demo"],
            }[command]
        )
        assert args.command == command and callable(args.func)
    # The networking tools are enclave-net's, not the app's.
    for command in ("egress", "fetch", "gateway"):
        assert _cli.main([command]) == 2  # a usage error (CliParser), not a command
