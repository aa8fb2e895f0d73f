"""`Nsm` over the emulator socket: every operation, argument checks, error answers."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from nsm import _cli, _protocol
from nsm._transport import UnixTransport
from nsm.client import Nsm
from nsm.emulator import Emulator
from nsm.errors import (
    ArgumentError,
    DeviceNotFound,
    ModuleError,
    NsmError,
    ProtocolError,
    TransportError,
)
from nsm.models import ErrorCode, RandomBytes


class RecordingTransport:
    """Counts requests and answers from an in-process emulator."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.requests: list[bytes] = []

    def exchange(self, request: bytes) -> bytes:
        self.requests.append(request)
        return self.emulator.handle(request)

    def close(self) -> None:
        pass


def test_all_seven_operations_over_the_socket(module: Nsm, emulator: Emulator) -> None:
    description = module.describe()
    assert description.module_id == emulator.module_id
    assert module.describe_pcr(0).data == emulator.pcr(0)
    value = module.extend_pcr(16, b"data")
    assert value == hashlib.sha384(bytes(48) + b"data").digest()
    module.lock_pcr(16)
    assert module.describe_pcr(16).locked
    module.lock_pcrs(20)
    assert module.describe().locked_pcrs == frozenset(range(20))
    assert len(module.get_random(32)) == 32
    document = module.attestation(nonce=b"n", user_data=b"u", public_key=b"k")
    payload = cbor2.loads(cbor2.loads(document)[2])
    assert (payload["nonce"], payload["user_data"], payload["public_key"]) == (b"n", b"u", b"k")
    assert sorted(payload["pcrs"]) == list(range(20))


def test_get_random_loops_over_256_byte_answers(emulator: Emulator) -> None:
    transport = RecordingTransport(emulator)
    data = Nsm(transport).get_random(1000)
    assert len(data) == 1000
    assert len(transport.requests) == 4  # ceil(1000 / 256)
    assert Nsm(transport).get_random(0) == b""
    assert len(transport.requests) == 4


def test_get_random_refuses_an_empty_answer() -> None:
    class Empty:
        def exchange(self, request: bytes) -> bytes:
            return _protocol.encode_response(RandomBytes(b""))

        def close(self) -> None:
            pass

    with pytest.raises(ProtocolError, match="no bytes"):
        Nsm(Empty()).get_random(1)


def test_module_error_carries_the_error_code(module: Nsm) -> None:
    with pytest.raises(ModuleError) as info:
        module.extend_pcr(0, b"x")
    assert info.value.code is ErrorCode.READ_ONLY_INDEX
    assert "ReadOnlyIndex" in str(info.value)


def test_mismatched_answer_is_a_protocol_error(emulator: Emulator) -> None:
    class Wrong:
        def exchange(self, request: bytes) -> bytes:
            return emulator.handle(
                _protocol.encode_request(_protocol.decode_request(b"\x69GetRandom"))
            )

        def close(self) -> None:
            pass

    with pytest.raises(ProtocolError, match="InvalidResponse"):
        Nsm(Wrong()).describe()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.describe_pcr(0x10000), "u16"),
        (lambda m: m.describe_pcr(-1), "u16"),
        (lambda m: m.describe_pcr(True), "u16"),
        (lambda m: m.describe_pcr("1"), "u16"),
        (lambda m: m.extend_pcr(16, "text"), "bytes"),
        (lambda m: m.lock_pcr(70000), "u16"),
        (lambda m: m.lock_pcrs(0x10000), "u16"),
        (lambda m: m.get_random(-1), "non-negative"),
        (lambda m: m.attestation(nonce="abc"), "bytes"),
        (lambda m: m.attestation(public_key=bytes(4090)), "at most 4096"),
        (lambda m: m.extend_pcr(16, bytes(5000)), "at most 4096"),
    ],
)
def test_arguments_are_checked_before_anything_is_sent(
    emulator: Emulator, call: object, message: str
) -> None:
    transport = RecordingTransport(emulator)
    with pytest.raises(ArgumentError, match=message):
        call(Nsm(transport))  # type: ignore[operator]
    assert transport.requests == []


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.describe_pcr(32),
        lambda m: m.extend_pcr(40, b"x"),
        lambda m: m.lock_pcr(0xFFFF),
        lambda m: m.lock_pcrs(33),
    ],
)
def test_index_past_max_pcrs_is_the_modules_answer(emulator: Emulator, call: object) -> None:
    """Like AWS's Rust client, only the u16 wire range is checked locally: the module knows its
    own max_pcrs and answers InvalidIndex."""
    transport = RecordingTransport(emulator)
    with pytest.raises(ModuleError) as caught:
        call(Nsm(transport))  # type: ignore[operator]
    assert caught.value.code is ErrorCode.INVALID_INDEX
    assert len(transport.requests) == 1


def test_attestation_field_size_is_the_modules_answer() -> None:
    """No local 1024-byte cap: real modules sign larger fields (an ML-KEM-768 key is 1,184 bytes);
    the emulator refuses them by default (AWS's documented limit) and takes them when told."""
    key = bytes(range(256)) * 4 + bytes(160)
    assert len(key) == 1184
    strict = RecordingTransport(Emulator(seed=7))
    with pytest.raises(ModuleError) as caught:
        Nsm(strict).attestation(public_key=key)
    assert caught.value.code is ErrorCode.INPUT_TOO_LARGE
    assert len(strict.requests) == 1
    lenient = Nsm(RecordingTransport(Emulator(seed=7, attestation_field_max=None)))
    payload = cbor2.loads(cbor2.loads(lenient.attestation(public_key=key))[2])
    assert payload["public_key"] == key
    wider = Nsm(RecordingTransport(Emulator(seed=7, attestation_field_max=2048)))
    assert cbor2.loads(cbor2.loads(wider.attestation(nonce=bytes(2048)))[2])["nonce"] == bytes(2048)
    with pytest.raises(ModuleError):
        wider.attestation(nonce=bytes(2049))


def test_emulator_socket_missing_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="nsm emulator serve"):
        Nsm.emulator(tmp_path / "absent.sock").describe()


def test_open_selects_the_emulator_only_when_told(
    monkeypatch: pytest.MonkeyPatch, emulator_socket: Path, emulator: Emulator
) -> None:
    monkeypatch.setenv("NSM_EMULATOR", f"unix:{emulator_socket}")
    with Nsm.open() as module:
        assert module.describe().module_id == emulator.module_id
    monkeypatch.setenv("NSM_EMULATOR", "tcp:127.0.0.1:1")
    with pytest.raises(ArgumentError, match="unix:PATH"):
        Nsm.open()


@pytest.mark.skipif(os.path.exists("/dev/nsm"), reason="this machine has a real /dev/nsm")
def test_missing_device_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSM_EMULATOR", raising=False)
    with pytest.raises(DeviceNotFound, match="not running inside a Nitro enclave") as info:
        Nsm.open()
    assert "emulator" in str(info.value)


def test_transport_reconnects_in_a_forked_child(emulator_socket: Path) -> None:
    transport = UnixTransport(emulator_socket)
    module = Nsm(transport)
    parent_id = module.describe().module_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not share the parent's connection
        try:
            os.write(write, module.describe().module_id.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 200).decode() == parent_id
    os.close(read)
    assert module.describe().module_id == parent_id
    module.close()
    module.close()  # idempotent


ROLE_ARN = "arn:aws:iam::123456789012:role/Webserver"
#: AWS's worked example for PCR3 (the User Guide's "Where to get an enclave's measurements").
ROLE_PCR3 = hashlib.sha384(bytes(48) + ROLE_ARN.encode()).hexdigest()


def test_cli_sets_boot_pcrs() -> None:
    signing = hashlib.sha384(b"signing certificate").hexdigest()
    serve = ["emulator", "serve", "--socket", "s", "--root-out", "r", "--seed", "3"]
    args = _cli._parser().parse_args([*serve, "--pcr", f"8={signing}", "--iam-role", ROLE_ARN])
    emulator = _cli.emulator_from_args(args)
    assert emulator.pcr(3).hex() == ROLE_PCR3
    assert ROLE_PCR3.startswith("78fce75d")  # the value AWS prints for this ARN
    assert emulator.pcr(8).hex() == signing
    # PCR3/PCR8 are boot PCRs: locked, and in every document
    payload = cbor2.loads(cbor2.loads(Nsm(RecordingTransport(emulator)).attestation())[2])
    assert payload["pcrs"][3].hex() == ROLE_PCR3
    assert payload["pcrs"][8].hex() == signing
    both = _cli._parser().parse_args([*serve, "--pcr", f"3={signing}", "--iam-role", ROLE_ARN])
    with pytest.raises(NsmError, match="either"):
        _cli.emulator_from_args(both)
    assert _cli._parser().parse_args([*serve, "--field-max", "none"]).field_max is None
    assert _cli._parser().parse_args([*serve, "--field-max", "2048"]).field_max == 2048


@pytest.mark.parametrize(
    "bad", [["--pcr", "16=" + "00" * 48], ["--pcr", "3=00"], ["--pcr", "x"], ["--field-max", "-1"]]
)
def test_cli_refuses_bad_boot_values(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["emulator", "serve", "--socket", "s", "--root-out", "r", *bad]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_serves_a_debug_emulator(sock_dir: Path) -> None:
    sock, root = sock_dir / "debug.sock", sock_dir / "root.pem"
    nsm = [sys.executable, "-m", "nsm._cli"]
    serve = [*nsm, "emulator", "serve", "--socket", str(sock), "--root-out", str(root), "--debug"]
    server = subprocess.Popen([*serve, "--iam-role", ROLE_ARN], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        assert "serving on unix:" in server.stderr.readline()
        got = subprocess.run(
            [*nsm, "--emulator", f"unix:{sock}", "pcr", "get", "0", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        assert f'"data": "{"00" * 48}"' in got.stdout
        pcr3 = subprocess.run(
            [*nsm, "--emulator", f"unix:{sock}", "pcr", "get", "3", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f'"data": "{ROLE_PCR3}"' in pcr3.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()


def test_cli_against_a_served_emulator(tmp_path: Path) -> None:
    """`nsm emulator serve` in a real subprocess, driven by the `nsm` command line."""
    sock, root = tmp_path / "nsm.sock", tmp_path / "root.pem"
    nsm = [sys.executable, "-m", "nsm._cli"]
    server = subprocess.Popen(
        [*nsm, "emulator", "serve", "--socket", str(sock), "--root-out", str(root), "--seed", "4"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        banner = server.stderr.readline()
        assert "serving on unix:" in banner
        assert root.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        emu = ["--emulator", f"unix:{sock}"]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*nsm, *emu, *args], capture_output=True, text=True, timeout=60)

        described = run("describe", "--json")
        assert described.returncode == 0, described.stderr
        assert '"max_pcrs": 32' in described.stdout
        extended = run("pcr", "extend", "16", "--text", "abc", "--json")
        assert hashlib.sha384(bytes(48) + b"abc").hexdigest() in extended.stdout
        assert run("pcr", "lock", "16").returncode == 0
        refused = run("pcr", "extend", "16", "--hex", "00")
        assert refused.returncode == 1
        assert "ReadOnlyIndex" in refused.stderr
        assert len(bytes.fromhex(run("random", "300").stdout.strip())) == 300
        b64 = run("attest", "--user-data", "0102")
        assert b64.returncode == 0, b64.stderr
        payload = cbor2.loads(cbor2.loads(base64.b64decode(b64.stdout))[2])
        assert payload["user_data"] == b"\x01\x02"
        out = tmp_path / "doc.cbor"
        assert run("attest", "--nonce", "abcd", "--out", str(out)).returncode == 0
        assert cbor2.loads(cbor2.loads(out.read_bytes())[2])["nonce"] == b"\xab\xcd"
        usage = run("pcr", "extend", "16", "--hex", "zz")
        assert usage.returncode == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()
    assert server.returncode == 0
    assert not sock.exists()
