"""The machine-output contract of `nitro-attest` and the service, hints, readable values, and
the one-call `attestation.verify` (docs/schemas/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import attestation
from attestation import AttestationDocument, Policy, Verifier, load_pem_roots
from attestation._cli import main
from attestation.errors import DebugDocument
from attestation.service import create_app, parse_config
from attestation.testing import DocumentFactory, default_pcrs
from tests.attestation.conftest import RealVector, requires_real
from tests.output_contract import (
    assert_closed_stdout_is_quiet,
    assert_help_lists_exit_codes,
    check,
    check_error,
)

CBOR = {"content-type": "application/cbor"}


def _pcrs(data: bytes) -> dict[int, bytes]:
    return {i: v for i, v in AttestationDocument.parse(data).pcrs.items() if i in (0, 1, 2)}


def _pcr_args(data: bytes) -> list[str]:
    return [a for i, v in _pcrs(data).items() for a in ("--pcr", f"{i}={v.hex()}")]


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


# --- nitro-attest --json ------------------------------------------------------------------------


@requires_real
def test_verify_json_is_the_library_result(
    tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    at = prod.timestamp
    path = _write(tmp_path, "d", prod.data)
    code, result = _run(["verify", path, *_pcr_args(prod.data), "--at", at.isoformat(),
                         "--json"], capsys)  # fmt: skip
    assert code == 0
    check("verification", result)
    doc = attestation.verify(prod.data, pcrs=_pcrs(prod.data), at=at)
    assert result == doc.to_dict() == json.loads(doc.to_json())
    assert result["timestamp"].endswith("Z") and len(result["timestamp"]) == 24
    assert len(result["certificates"]) == 5


@requires_real
def test_inspect_json_matches_its_schema(
    tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    code, info = _run(["inspect", "--json", _write(tmp_path, "d", prod.data)], capsys)
    assert code == 0
    check("inspect", info)
    assert info["timestamp_ms"] == AttestationDocument.parse(prod.data).timestamp_ms


@requires_real
@pytest.mark.parametrize(
    ("argv", "status", "code"),
    [
        (["verify", "DOC", "--pcr", "0=" + "00" * 48, "--at", "AT"], 1, "policy.pcr-mismatch"),
        (["verify", "DOC", "--unsafe-no-pcr-check", "--nonce", "00", "--at", "AT"], 1,
         "policy.nonce-mismatch"),
        (["verify", "JUNK", "--unsafe-no-pcr-check"], 1, "document.encoding"),
        (["inspect", "JUNK"], 1, "document.encoding"),
        (["verify", "DOC"], 2, "usage"),  # no PCR
        (["verify", "DOC", "--pcr", "0=zz"], 2, "usage"),  # argparse's own error
        (["verify", "/nonexistent/doc", "--unsafe-no-pcr-check"], 2, "usage"),
        (["inspect", "/nonexistent/doc"], 2, "usage"),
        (["verify", "DOC", "--pcrs-from", "/nonexistent.json"], 2, "usage"),
    ],
)  # fmt: skip
def test_errors_are_json_with_json(
    tmp_path: Path,
    prod: RealVector,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    code: str,
) -> None:
    files = {
        "DOC": _write(tmp_path, "d", prod.data),
        "JUNK": _write(tmp_path, "junk", b"hello, world\n"),
        "AT": prod.timestamp.isoformat(),
    }
    result_code, result = _run([files.get(a, a) for a in argv] + ["--json"], capsys)
    assert result_code == status
    error = check_error(result, code)
    if code == "document.encoding":
        assert error["message"] == "not an attestation document (expected raw CBOR, hex or base64)"


@requires_real
def test_hints_name_the_flags(
    tmp_path: Path, prod: RealVector, debug: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    dpath = _write(tmp_path, "debug", debug.data)
    at = debug.timestamp.isoformat()
    code, result = _run(["verify", dpath, *_pcr_args(debug.data), "--at", at, "--json"], capsys)
    assert code == 1
    assert "--allow-debug" in check_error(result, "policy.debug")["hint"]
    # An expired sample: the hint names --at with the document's own time, and following it works.
    path = _write(tmp_path, "d", prod.data)
    code, result = _run(["verify", path, *_pcr_args(prod.data), "--json"], capsys)
    assert code == 1
    hint = check_error(result, "chain.expired")["hint"]
    stamp = hint.rpartition("--at ")[2]
    assert datetime.fromisoformat(stamp) == prod.timestamp
    assert main(["verify", path, *_pcr_args(prod.data), "--at", stamp]) == 0
    # Without --json the hint goes to stderr with the refusal.
    assert main(["verify", dpath, *_pcr_args(debug.data), "--at", at]) == 1
    assert "hint: pass --allow-debug" in capsys.readouterr().err


@requires_real
def test_library_hints_name_the_python_api(debug: RealVector) -> None:
    with pytest.raises(DebugDocument) as info:
        attestation.verify(debug.data, pcrs=_pcrs(debug.data), at=debug.timestamp)
    assert info.value.hint is not None and "Policy(allow_debug=True)" in info.value.hint
    assert "--" not in info.value.hint


@requires_real
def test_pcrs_from_nitro_cli_measurements(
    tmp_path: Path, prod: RealVector, capsys: pytest.CaptureFixture[str]
) -> None:
    pcrs = _pcrs(prod.data)
    path = _write(tmp_path, "d", prod.data)
    at = prod.timestamp.isoformat()
    # The shape `nitro-cli describe-eif` / `build-enclave` print.
    described = {
        "EifVersion": 4,
        "Measurements": {"HashAlgorithm": "Sha384 { ... }"}
        | {f"PCR{i}": v.hex() for i, v in pcrs.items()},
    }
    eif = _write(tmp_path, "describe-eif.json", json.dumps(described).encode())
    assert main(["verify", path, "--pcrs-from", eif, "--at", at]) == 0
    # The inner object alone, as people save it.
    inner = _write(tmp_path, "pcr.json", json.dumps(described["Measurements"]).encode())
    assert main(["verify", path, "--pcrs-from", inner, "--at", at]) == 0
    capsys.readouterr()
    described["Measurements"]["PCR1"] = "00" * 48  # type: ignore[index]
    eif = _write(tmp_path, "wrong.json", json.dumps(described).encode())
    code, result = _run(["verify", path, "--pcrs-from", eif, "--at", at, "--json"], capsys)
    assert code == 1
    check_error(result, "policy.pcr-mismatch")
    # A PCR given twice (file and --pcr), another algorithm, no PCRs: usage errors.
    assert main(["verify", path, "--pcrs-from", inner, "--pcr", f"0={pcrs[0].hex()}"]) == 2
    sha256 = _write(tmp_path, "256.json", b'{"HashAlgorithm": "Sha256", "PCR0": "00"}')
    assert main(["verify", path, "--pcrs-from", sha256]) == 2
    assert main(["verify", path, "--pcrs-from", _write(tmp_path, "e.json", b"{}")]) == 2


def test_user_data_public_key_module_id(
    tmp_path: Path, factory: DocumentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    data = factory.document(user_data=b"hello", public_key=b"\x04" * 65)
    path = _write(tmp_path, "d", data)
    root = _write(tmp_path, "root.pem", factory.root_pem)
    module_id = AttestationDocument.parse(data).module_id
    base = ["verify", path, "--root", root, *_pcr_args(data), "--at",
            factory.timestamp.isoformat(), "--json"]  # fmt: skip
    good = ["--user-data", b"hello".hex(), "--public-key", "04" * 65, "--module-id", module_id]
    code, result = _run(base + good, capsys)
    assert code == 0
    assert (result["user_data"], result["module_id"]) == (b"hello".hex(), module_id)
    for flag, value, error in [
        ("--user-data", "00", "policy.user-data-mismatch"),
        ("--public-key", "05" * 65, "policy.public-key-mismatch"),
        ("--module-id", "i-0-enc0", "policy.module-id-mismatch"),
    ]:
        code, result = _run([*base, flag, value], capsys)
        assert code == 1
        assert flag in check_error(result, error)["hint"]


def test_emulator_documents_hint_at_root(
    tmp_path: Path, factory: DocumentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    data = factory.document()
    argv = ["verify", _write(tmp_path, "d", data), *_pcr_args(data), "--at",
            factory.timestamp.isoformat(), "--json"]  # fmt: skip
    code, result = _run(argv, capsys)
    assert code == 1
    assert "--root" in check_error(result, "chain.untrusted")["hint"]


@pytest.mark.parametrize("argv", [[], ["verify"], ["inspect"], ["serve"]])
def test_help_lists_exit_codes(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_help_lists_exit_codes(main, argv, capsys)


@requires_real
def test_closed_stdout_is_not_a_traceback(tmp_path: Path, prod: RealVector) -> None:
    path = _write(tmp_path, "d", prod.data)
    assert_closed_stdout_is_quiet("attestation._cli", ["inspect", "--json", path])


# --- readable values and the one-call verify ------------------------------------------------------


@requires_real
def test_reprs_show_hex(prod: RealVector) -> None:
    parsed = AttestationDocument.parse(prod.data)
    doc = attestation.verify(prod.data, pcrs=_pcrs(prod.data), at=prod.timestamp)
    for text in (repr(parsed), repr(doc)):
        assert parsed.pcrs[0].hex() in text
        assert "b'" not in text and "\\x" not in text
    assert "NOT VERIFIED" in repr(parsed)
    assert f"raw=<{len(prod.data)} bytes>" in repr(doc)


@requires_real
def test_one_call_verify_reuses_one_verifier(prod: RealVector) -> None:
    at = prod.timestamp
    first = attestation.verify(prod.data, pcrs=_pcrs(prod.data), at=at, max_age=None)
    explicit = Verifier.aws().verify(
        prod.data, policy=Policy(pcrs=_pcrs(prod.data), max_age=None), at=at
    )
    assert first == explicit
    verifier = attestation.verifier._per_thread.verifier
    hits = verifier.cache_info().hits
    attestation.verify(prod.data, pcrs=_pcrs(prod.data), at=at)
    assert attestation.verifier._per_thread.verifier is verifier
    assert verifier.cache_info().hits == hits + 1
    with pytest.raises(attestation.PolicyError):
        attestation.verify(prod.data, pcrs={0: "00" * 48}, at=at)


# --- the service ----------------------------------------------------------------------------------


@pytest.fixture
def service(factory: DocumentFactory, tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "root.pem").write_bytes(factory.root_pem)
    pcrs = {str(i): v.hex() for i, v in default_pcrs(factory.pki.instance_id).items() if i < 3}
    config = parse_config(
        {
            "service": {"trust_roots": ["root.pem"], "allow_at_override": True},
            "policies": {"app": {"pcrs": pcrs, "max_age_seconds": 120}},
        },
        base_dir=tmp_path,
    )
    app = create_app(config, clock=lambda: factory.timestamp + timedelta(seconds=30))
    yield TestClient(app, raise_server_exceptions=True)


def test_service_result_is_to_dict_plus_policy(
    service: TestClient, factory: DocumentFactory
) -> None:
    data = factory.document(user_data=b"u", nonce=b"n")
    response = service.post("/v1/verify?policy=app", content=data, headers=CBOR)
    assert response.status_code == 200, response.text
    body = check("verification", response.json())
    verifier = Verifier(roots=load_pem_roots(factory.root_pem))
    at = factory.timestamp + timedelta(seconds=30)
    doc = verifier.verify(data, policy=Policy(pcrs=_pcrs(data)), at=at)
    assert body == {**doc.to_dict(), "policy": "app"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/verify?policy=app", b"\x84\x00", CBOR, 422, "cbor.truncated"),
        ("/v1/verify?policy=app&at=2020-01-01T00:00:00Z", None, CBOR, 422, "chain.not-yet-valid"),
        ("/v1/verify?policy=nope", None, CBOR, 400, "request.unknown-policy"),
        ("/v1/verify?policy=app&nonce=zz", None, CBOR, 400, "request.nonce"),
        ("/v1/verify", b"{}", {"content-type": "text/plain"}, 415, "request.content-type"),
        ("/nowhere", b"", CBOR, 404, "request.not-found"),
    ],
)
def test_service_errors_have_the_error_shape(
    service: TestClient,
    factory: DocumentFactory,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = service.post(path, content=factory.document() if body is None else body,
                            headers=headers)  # fmt: skip
    assert response.status_code == status
    error = check_error(response.json(), code)
    if code == "request.content-type":
        assert "application/cbor" in error["hint"]


def test_openapi_agrees_with_the_published_schemas(service: TestClient) -> None:
    components = service.get("/openapi.json").json()["components"]["schemas"]
    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    for name, component in (("verification", "Verified"), ("error", "Error")):
        published = json.loads((schemas / f"{name}.schema.json").read_text())
        # The service always names the policy; the library's result has none.
        required = set(components[component]["required"]) - {"policy"}
        assert required == set(published["required"]), name
        # Context keys beside "error" (the policy) may be the service's own.
        assert set(published["properties"]) <= set(components[component]["properties"]), name
    error = components["Error"]["properties"]["error"]
    published_error = json.loads((schemas / "error.schema.json").read_text())
    assert set(error["required"]) == set(published_error["properties"]["error"]["required"])


def test_times_are_utc_milliseconds() -> None:
    from attestation._output import iso_time

    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert iso_time(when) == "2026-01-02T03:04:05.678Z"
    elsewhere = when.astimezone(timezone(timedelta(hours=-5)))
    assert iso_time(elsewhere) == "2026-01-02T03:04:05.678Z"


@pytest.mark.parametrize("data", [b"hello, world", b"\xa0", b"\x01"])
def test_garbage_is_not_an_attestation_document(data: bytes) -> None:
    with pytest.raises(attestation.MalformedDocument) as info:
        AttestationDocument.parse(data)
    assert info.value.reason.startswith("not an attestation document")
