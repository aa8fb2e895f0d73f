"""`--sealed-key`: the oracle's signer address survives an enclave restart, and a changed image
or config cannot unseal it (the boot stops; no new key replaces the sealed one).

In process, against the parent services of the demo: the KMS double on loopback HTTPS (SigV4
checked, key policy on PCR0 and PCR16), the credentials endpoint and the write-once blob store.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_net.address import UnixAddress, VsockAddress, parse_address
from enclave_net.egress import EgressConfig
from nsm._server import EmulatorServer
from nsm.client import Nsm
from nsm.emulator import Emulator
from oracle_example import _cli
from oracle_example.config import OracleConfig
from oracle_example.demo import OracleStack
from oracle_example.errors import EnclaveBootError
from oracle_example.kms_parent import SealedKeyParent
from oracle_example.oracle import EnclaveOptions, Oracle, expected_pcr16
from oracle_example.sealed import SealedKeyError, SealedKeyOptions, SealedKeyRefused

SEED = 23
CONFIG = OracleConfig()


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=SEED)


@pytest.fixture
def directory(sockdir: Path) -> Path:
    return sockdir  # short: Unix socket paths must fit in 108 bytes


@pytest.fixture
def parent(directory: Path, emulator: Emulator) -> Iterator[SealedKeyParent]:
    with SealedKeyParent(
        directory,
        root_pem=emulator.root_pem,
        pcr0=emulator.pcr(0),
        pcr16=expected_pcr16(CONFIG),
    ) as running:
        yield running


def _boot(
    emulator: Emulator,
    directory: Path,
    sealed: SealedKeyOptions,
    config: OracleConfig = CONFIG,
) -> Oracle:
    """One enclave launch: the NSM as the new enclave finds it, then boot()."""
    emulator.restart()
    server = EmulatorServer(directory / "nsm.sock", emulator)
    server.serve_in_thread()
    try:
        with Nsm.emulator(directory / "nsm.sock") as nsm:
            oracle = Oracle(
                nsm,
                EnclaveOptions(
                    config=config,
                    egress=EgressConfig.from_strings(routes=["api.binance.com:443=unix:/none"]),
                    listen=UnixAddress("/none"),
                    production=False,
                    sealed_key=sealed,
                ),
                emulated=True,
            )
            oracle.boot()
            return oracle
    finally:
        server.shutdown()
        server.server_close()


def test_the_signer_address_survives_a_restart(
    parent: SealedKeyParent, emulator: Emulator, directory: Path
) -> None:
    options = parent.options(parse_address(parent.tcp_route))
    first = _boot(emulator, directory, options)
    assert first.key_origin == "sealed"
    blob = parent.blob_file.read_bytes()

    second = _boot(emulator, directory, options)
    assert second.key_origin == "unsealed"
    assert second.address == first.address and second.public_key == first.public_key
    assert second.pcr16 == first.pcr16 == expected_pcr16(CONFIG)
    # The restart read the blob; nothing rewrote it.
    assert parent.blob_file.read_bytes() == blob
    assert parent.served() == ["Encrypt", "Decrypt"]


def test_another_config_is_refused_and_the_key_kept(
    parent: SealedKeyParent, emulator: Emulator, directory: Path
) -> None:
    options = parent.options(parse_address(parent.tcp_route))
    first = _boot(emulator, directory, options)
    blob = parent.blob_file.read_bytes()

    changed = dataclasses.replace(CONFIG, min_sources=CONFIG.min_sources + 1)
    with pytest.raises(SealedKeyRefused) as refused:
        _boot(emulator, directory, options, config=changed)
    message = str(refused.value)
    assert refused.value.code == "enclave.sealed_key_refused"
    assert isinstance(refused.value, EnclaveBootError)
    # It names the measurements KMS saw and the two ways forward.
    assert expected_pcr16(changed).hex() in message and emulator.pcr(0).hex() in message
    assert "kms:RecipientAttestation:PCR16" in message and "delete the sealed blob" in message
    assert parent.served()[-1] == "Decrypt: AccessDeniedException"
    assert parent.blob_file.read_bytes() == blob

    # The original config still unseals the original key.
    assert _boot(emulator, directory, options).address == first.address


def test_another_image_is_refused(parent: SealedKeyParent, directory: Path) -> None:
    options = parent.options(parse_address(parent.tcp_route))
    original = Emulator(seed=SEED)
    first = _boot(original, directory, options)
    # Same instance and PKI (same seed), another enclave image in PCR0.
    other = Emulator(seed=SEED, pcrs={0: bytes([0xEE]) * 48})
    with pytest.raises(SealedKeyRefused, match=bytes([0xEE] * 48).hex()):
        _boot(other, directory, options)
    assert _boot(original, directory, options).address == first.address


def test_an_unreachable_store_stops_the_boot(
    parent: SealedKeyParent, emulator: Emulator, directory: Path
) -> None:
    options = dataclasses.replace(
        parent.options(parse_address(parent.tcp_route)),
        store=UnixAddress(str(directory / "no-store.sock")),
    )
    with pytest.raises(SealedKeyError, match=r"no-store\.sock") as failed:
        _boot(emulator, directory, options)
    assert not isinstance(failed.value, SealedKeyRefused)
    assert parent.served() == []


def test_the_cli_needs_a_region_with_a_sealed_key() -> None:
    args = _cli.build_parser().parse_args(["enclave", "--sealed-key", "alias/k"])
    with pytest.raises(ValueError, match="--kms-region"):
        _cli._sealed_key(args)
    args = _cli.build_parser().parse_args(
        ["enclave", "--sealed-key", "alias/k", "--kms-region", "eu-west-1"]
    )
    options = _cli._sealed_key(args)
    assert options is not None
    assert options.egress().routes  # kms.eu-west-1.amazonaws.com:443 -> vsock:3:8000
    assert [str(a) for a in options.egress().routes.values()] == ["vsock:3:8000"]
    assert (str(options.credentials), str(options.store)) == ("vsock:3:8002", "vsock:3:8003")


DEPLOY = Path(__file__).resolve().parents[2] / "oracle_example" / "deploy"


def _exec_start(unit: str) -> list[str]:
    lines = (DEPLOY / unit).read_text().splitlines()
    (command,) = [
        line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart=")
    ]
    return command.split()


def test_the_parent_units_serve_where_the_enclave_flags_point() -> None:
    from enclave_net._cli import build_parser as enclave_net_parser

    enclave = _cli.build_parser().parse_args(
        ["enclave", "--sealed-key", "alias/nitro-oracle-signer", "--kms-region", "us-east-1"]
    )
    options = _cli._sealed_key(enclave)
    assert options is not None
    for unit, enclave_side in (
        ("nitro-oracle-kms-credentials.service", options.credentials),
        ("nitro-oracle-sealed-key-store.service", options.store),
    ):
        assert isinstance(enclave_side, VsockAddress) and enclave_side.cid == 3
        argv = _exec_start(unit)
        assert argv[0].endswith("/enclave-net"), unit
        args = enclave_net_parser().parse_args(argv[1:])  # the flags exist and parse
        listen = parse_address(args.listen)
        # The parent listens on any CID at the port the enclave dials on CID 3.
        assert str(listen) == f"vsock:4294967295:{enclave_side.port}", unit
    # The KMS route: AWS's vsock-proxy on 8000, allowed for the region's KMS endpoint.
    assert str(options.kms_route) == "vsock:3:8000"
    assert (
        "{address: kms.us-east-1.amazonaws.com, port: 443}"
        in (DEPLOY / "vsock-proxy.yaml").read_text()
    )


def test_the_enclave_process_refuses_to_start_with_another_config() -> None:
    """End to end: `nitro-oracle enclave --sealed-key ...` as the demo runs it (as root in a
    network namespace, KMS through the parent's route), restarted with another config."""
    stack = OracleStack(seed=SEED, replay=True, sealed=True, interval=0.3)
    try:
        stack.start()
        first = stack.wait_ready(timeout=20)
        assert stack.kms is not None and first["key"] == "sealed"
        blob = stack.kms.blob_file.read_bytes()

        stack.restart_enclave()
        assert stack.wait_ready(timeout=20)["address"] == first["address"]

        changed = dataclasses.replace(CONFIG, min_sources=CONFIG.min_sources + 1)
        other = stack.dir / "other-config.json"
        other.write_text(json.dumps(changed.to_json()))
        stack.enclave_args = ("--config", str(other))  # the last --config wins
        with pytest.raises(RuntimeError, match="exited with 2") as exited:
            stack.restart_enclave()
        # The log line says why, with the error's code, and what to do.
        assert '"code": "enclave.sealed_key_refused"' in str(exited.value)
        assert "KMS refused to unseal the signing key" in str(exited.value)
        assert stack.kms.served() == ["Encrypt", "Decrypt", "Decrypt: AccessDeniedException"]
        assert stack.kms.blob_file.read_bytes() == blob
    finally:
        stack.close()


def test_a_blob_that_is_not_a_secp256k1_scalar_stops_the_boot(
    parent: SealedKeyParent, emulator: Emulator, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = parent.options(parse_address(parent.tcp_route))
    # A sealed secret of 32 zero bytes: the right size, but not a valid private key.
    zero = types.SimpleNamespace(secret=bytes(32))
    monkeypatch.setattr("oracle_example.oracle._key_from_nsm", lambda nsm: zero)
    with pytest.raises(EnclaveBootError, match="not a secp256k1 scalar"):
        _boot(emulator, directory, options)
    monkeypatch.undo()
    # Sealed now; the next boot unseals the same bytes and refuses them again.
    with pytest.raises(EnclaveBootError, match="not a secp256k1 scalar"):
        _boot(emulator, directory, options)
    assert parent.served() == ["Encrypt", "Decrypt"]
