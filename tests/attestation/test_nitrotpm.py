"""NitroTPM (EC2 instance) documents verified as their own kind: library, CLI and service.

The three real ones (vectors/real/nitrotpm_*) verify at their own time with `kind="nitrotpm"`
and a policy over their registers; the enclave verifier keeps refusing them; each kind's policy
refuses the other kind's document. The kind's broken variants are corpus cases
(vectors/cases/nitrotpm.py, checked by tests/vectors/test_corpus.py).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from attestation import (
    AllOf,
    AttestationDocument,
    AttestationError,
    NitroTpmPcrSet,
    NitroTpmPolicy,
    PcrSet,
    Policy,
    UnsafeNoPcrCheck,
    Verifier,
)
from attestation._cli import main
from attestation.service import ConfigError, create_app, parse_config
from tests.attestation.conftest import RealVector, real_vectors, requires_real

TPM = real_vectors("nitrotpm")
ENCLAVE = real_vectors("nitro-enclave")
CBOR = {"content-type": "application/cbor"}


def _registers(vector: RealVector) -> dict[int, bytes]:
    return dict(AttestationDocument.parse(vector.data).pcrs)


def _code(exc: pytest.ExceptionInfo[AttestationError]) -> str:
    return exc.value.code


@pytest.fixture
def prod_enclave() -> RealVector:
    return next(v for v in ENCLAVE if not v.debug)


# --- the library ------------------------------------------------------------------------------


@requires_real
@pytest.mark.parametrize("vector", TPM, ids=lambda v: v.name)
def test_real_nitrotpm_verifies_as_its_kind(vector: RealVector) -> None:
    registers = _registers(vector)
    doc = AttestationDocument.parse(vector.data)
    assert len(registers) == 24 and set(registers) == set(range(24))
    policy = NitroTpmPolicy(
        pcrs={i: registers[i] for i in (0, 4, 7, 12)},
        nonce=doc.nonce,
        public_key=doc.public_key,
        max_age=timedelta(minutes=5),
    )
    verified = Verifier.aws().verify(
        vector.data, policy=policy, at=vector.timestamp, kind="nitrotpm"
    )
    assert verified.kind == "nitrotpm"
    assert dict(verified.pcrs) == registers
    assert verified.module_id.endswith("-tpm0000000000000000")
    assert not verified.is_debug
    assert verified.timestamp == vector.timestamp


@requires_real
@pytest.mark.parametrize("vector", TPM, ids=lambda v: v.name)
def test_real_nitrotpm_policy_rules(vector: RealVector) -> None:
    registers = _registers(vector)
    doc = AttestationDocument.parse(vector.data)
    pcrs = {4: registers[4]}
    verifier = Verifier.aws()
    at = vector.timestamp

    def refused(policy: Any, when: Any = at) -> str:
        with pytest.raises(AttestationError) as exc:
            verifier.verify(vector.data, policy=policy, at=when, kind="nitrotpm")
        return _code(exc)

    assert refused(NitroTpmPolicy(pcrs={4: registers[5]})) == "policy.pcr-mismatch"
    assert refused(NitroTpmPolicy(pcrs=pcrs, nonce=b"other")) == "policy.nonce-mismatch"
    # user_data is null in the real ones: any expected value is a mismatch.
    assert refused(NitroTpmPolicy(pcrs=pcrs, user_data=b"")) == "policy.user-data-mismatch"
    assert refused(NitroTpmPolicy(pcrs=pcrs, public_key=b"\x04")) == "policy.public-key-mismatch"
    assert refused(NitroTpmPolicy(pcrs=pcrs), at + timedelta(minutes=6)) == "policy.stale"
    assert refused(NitroTpmPolicy(pcrs=pcrs, module_id="i-0other")) == "policy.module-id-mismatch"
    # The registers are not an enclave's PCRs: an enclave policy is refused before any work,
    # and an enclave PcrSet smuggled into a NitroTPM policy refuses the document.
    assert refused(Policy(pcrs=pcrs)) == "policy.no-pcr-check"
    assert refused(AllOf(NitroTpmPcrSet(pcrs), PcrSet(pcrs))) == "policy.pcr-mismatch"
    # Both rules pass with the document's own values.
    verifier.verify(
        vector.data,
        policy=NitroTpmPolicy(pcrs=pcrs, nonce=doc.nonce, module_id=doc.module_id),
        at=at,
        kind="nitrotpm",
    )


@requires_real
@pytest.mark.parametrize("vector", TPM, ids=lambda v: v.name)
def test_enclave_verifier_still_refuses_nitrotpm(vector: RealVector) -> None:
    registers = _registers(vector)
    for policy in (Policy(pcrs={4: registers[4]}), NitroTpmPolicy(pcrs={4: registers[4]})):
        with pytest.raises(AttestationError) as exc:
            Verifier.aws().verify(vector.data, policy=policy, at=vector.timestamp)
        assert _code(exc) == "document.nitrotpm"


@requires_real
def test_nitrotpm_verification_refuses_enclave_documents(prod_enclave: RealVector) -> None:
    pcrs = _registers(prod_enclave)
    with pytest.raises(AttestationError) as exc:
        Verifier.aws().verify(
            prod_enclave.data,
            policy=NitroTpmPolicy(pcrs={0: pcrs[0]}),
            at=prod_enclave.timestamp,
            kind="nitrotpm",
        )
    assert _code(exc) == "document.nitro-enclave"
    # A NitroTPM policy given to an enclave verification: its register set refuses the document.
    with pytest.raises(AttestationError) as exc:
        Verifier.aws().verify(
            prod_enclave.data, policy=NitroTpmPolicy(pcrs={0: pcrs[0]}), at=prod_enclave.timestamp
        )
    assert _code(exc) == "policy.pcr-mismatch"


def test_nitrotpm_policy_construction() -> None:
    with pytest.raises(ValueError, match=r"0\.\.23"):
        NitroTpmPcrSet({24: bytes(48)})
    with pytest.raises(ValueError, match="32, 48 or 64"):
        NitroTpmPcrSet({4: bytes(20)})
    with pytest.raises(AttestationError):
        NitroTpmPcrSet({})
    policy = NitroTpmPolicy(pcrs=[{4: bytes(48)}, {4: b"\x01" * 48}])
    assert policy.checks_nitrotpm_pcrs and not policy.allows_debug
    assert NitroTpmPolicy(pcrs=UnsafeNoPcrCheck()).checks_nitrotpm_pcrs
    assert not getattr(Policy(pcrs={4: bytes(48)}), "checks_nitrotpm_pcrs", False)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        Verifier.aws().verify(b"\x84", policy=NitroTpmPolicy(pcrs={0: bytes(48)}), kind="tpm")  # type: ignore[arg-type]


# --- the CLI ----------------------------------------------------------------------------------


@requires_real
def test_cli_kind_nitrotpm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vector = TPM[0]
    path = tmp_path / "tpm.cbor"
    path.write_bytes(vector.data)
    pcr4 = f"4={_registers(vector)[4].hex()}"
    at = vector.timestamp.isoformat()
    assert main(["verify", str(path), "--kind", "nitrotpm", "--pcr", pcr4, "--at", at]) == 0
    assert "VERIFIED" in capsys.readouterr().out
    assert main(["verify", str(path), "--pcr", pcr4, "--at", at, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "document.nitrotpm"
    usage = ["verify", str(path), "--kind", "nitrotpm", "--at", at]
    assert main([*usage, "--pcr", f"24={'00' * 48}"]) == 2
    assert main([*usage, "--pcr", pcr4, "--allow-debug"]) == 2


@requires_real
def test_cli_kind_nitrotpm_refuses_enclave(
    tmp_path: Path, prod_enclave: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "enclave.cbor"
    path.write_bytes(prod_enclave.data)
    pcr0 = f"0={_registers(prod_enclave)[0].hex()}"
    argv = ["verify", str(path), "--pcr", pcr0, "--at", prod_enclave.timestamp.isoformat()]
    assert main([*argv, "--kind", "nitrotpm", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "document.nitro-enclave"
    assert main([*argv, "--kind", "nitro-enclave"]) == 0


# --- the service ------------------------------------------------------------------------------


def _config(policies: dict[str, Any]) -> dict[str, Any]:
    return {"service": {"allow_at_override": True}, "policies": policies}


@requires_real
def test_service_policy_kind_nitrotpm(prod_enclave: RealVector) -> None:
    vector = TPM[0]
    registers = _registers(vector)
    config = _config(
        {
            "instances": {"kind": "nitrotpm", "pcrs": {"4": registers[4].hex()}},
            "enclaves": {"pcrs": {"4": registers[4].hex()}},
        }
    )
    client = TestClient(create_app(parse_config(config)), raise_server_exceptions=True)

    def post(policy: str, document: RealVector) -> Any:
        params = {"policy": policy, "at": document.timestamp.isoformat()}
        return client.post("/v1/verify", params=params, content=document.data, headers=CBOR)

    response = post("instances", vector)
    assert response.status_code == 200, response.text
    assert response.json()["module_id"] == AttestationDocument.parse(vector.data).module_id
    assert (
        post("enclaves", vector).status_code,
        post("enclaves", vector).json()["error"]["code"],
    ) == (
        422,
        "document.nitrotpm",
    )
    refused = post("instances", prod_enclave)
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "document.nitro-enclave")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "tpm", "pcrs": {"4": "00" * 48}}, "kind"),
        ({"kind": "nitrotpm", "pcrs": {"24": "00" * 48}}, "0..23"),
        ({"kind": "nitrotpm", "pcrs": {"4": "00" * 48}, "allow_debug": True}, "allow_debug"),
    ],
)
def test_service_config_nitrotpm_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config({"p": table}))
