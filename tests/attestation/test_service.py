"""The HTTP verifier service: real and synthetic documents, bad requests, config, metrics, logs."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from attestation import AttestationDocument
from attestation.service import (
    CONFIG_ENV,
    ConfigError,
    app_from_environment,
    create_app,
    load_config,
    parse_config,
)
from attestation.testing import (
    DocumentFactory,
    broken_documents,
    default_pcrs,
    valid_documents,
)
from tests.attestation.conftest import RealVector, real_vectors, requires_real
from vectors import corpus

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "attestation" / "service.example.toml"
CBOR = {"content-type": "application/cbor"}

ENCLAVE = real_vectors("nitro-enclave")
NEGATIVE = {v.name.split("_")[2]: v for v in real_vectors("nitro-enclave", negative=True)}
TPM = real_vectors("nitrotpm")


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _pcr_table(pcrs: dict[int, bytes], indices: tuple[int, ...] = (0, 1, 2)) -> dict[str, str]:
    return {str(i): pcrs[i].hex() for i in indices}


def _client(config: dict[str, Any], *, base_dir: Path | None = None, **kwargs: Any) -> TestClient:
    app = create_app(parse_config(config, base_dir=base_dir), **kwargs)
    return TestClient(app, raise_server_exceptions=True)


# --- real AWS documents, at their own time through the `at` override ----------------------------


def _real_policy_name(vector: RealVector) -> str:
    return "real-" + str(vector.entry["sha256"])[:12]


@pytest.fixture(scope="module")
def real_client() -> Iterator[TestClient]:
    policies: dict[str, Any] = {}
    for vector in ENCLAVE:
        pcrs = dict(AttestationDocument.parse(vector.data).pcrs)
        policies[_real_policy_name(vector)] = {
            "pcrs": _pcr_table(pcrs),
            "max_age_seconds": 300,
            "allow_debug": vector.debug,
        }
    # PCR0 of the first production document: a policy that no other image matches.
    prod = next(v for v in ENCLAVE if not v.debug)
    prod_pcr0 = AttestationDocument.parse(prod.data).pcrs[0].hex()
    policies["strict-prod"] = {"pcrs": {"0": prod_pcr0}}
    policies["wrong-pcr"] = {"pcrs": {"0": "ab" * 48}, "allow_debug": True}
    config = {"service": {"allow_at_override": True}, "policies": policies}
    with _client(config) as client:
        yield client


@requires_real
@pytest.mark.parametrize("vector", ENCLAVE, ids=lambda v: v.name)
def test_real_document_verifies_at_its_time(vector: RealVector, real_client: TestClient) -> None:
    parsed = AttestationDocument.parse(vector.data)
    at = _iso(vector.timestamp)
    name = _real_policy_name(vector)
    cbor = real_client.post(f"/v1/verify?policy={name}&at={at}", content=vector.data, headers=CBOR)
    assert cbor.status_code == 200, cbor.text
    body = cbor.json()
    assert body["verified"] is True
    assert body["module_id"] == parsed.module_id == vector.entry["module_id"]
    assert body["timestamp_ms"] == vector.entry["known_timestamp_ms"]
    assert body["debug"] is vector.debug
    assert body["pcrs"] == {str(i): v.hex() for i, v in sorted(parsed.pcrs.items())}
    assert body["public_key"] == (
        parsed.public_key.hex() if parsed.public_key is not None else None
    )
    assert body["user_data"] == (parsed.user_data.hex() if parsed.user_data is not None else None)
    assert body["nonce"] == (parsed.nonce.hex() if parsed.nonce is not None else None)
    certificates = body["certificates"]
    # The leaf, then cabundle[1:] reversed, then the pinned root: cabundle holds the root itself.
    assert len(certificates) == vector.entry["cabundle_len"] + 1
    assert certificates[0]["subject"] == vector.entry["leaf_subject"]
    assert "aws.nitro-enclaves" in certificates[-1]["subject"]
    for cert in certificates:
        validity = (
            datetime.fromisoformat(cert["not_before"]),
            datetime.fromisoformat(cert["not_after"]),
        )
        assert validity[0] <= vector.timestamp <= validity[1]
    # The same document as JSON gives the same answer.
    document = base64.b64encode(vector.data).decode()
    as_json = real_client.post("/v1/verify", json={"document": document, "policy": name, "at": at})
    assert as_json.status_code == 200
    assert as_json.json() == body


@requires_real
@pytest.mark.parametrize("vector", ENCLAVE[::8], ids=lambda v: v.name)
def test_real_document_refused_past_its_chain(vector: RealVector, real_client: TestClient) -> None:
    after = _iso(vector.window[1] + timedelta(seconds=1))
    name = _real_policy_name(vector)
    response = real_client.post(
        f"/v1/verify?policy={name}&at={after}", content=vector.data, headers=CBOR
    )
    assert response.status_code == 422
    # One second past the leaf's notAfter the chain fails before freshness is looked at.
    assert response.json()["error"]["code"] == "chain.expired"


@requires_real
def test_real_document_refused_under_wrong_pcrs_and_debug(real_client: TestClient) -> None:
    debug = next(v for v in ENCLAVE if v.debug)
    at = _iso(debug.timestamp)
    wrong = real_client.post(
        f"/v1/verify?policy=wrong-pcr&at={at}", content=debug.data, headers=CBOR
    )
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (422, "policy.pcr-mismatch")
    refused = real_client.post(
        f"/v1/verify?policy=strict-prod&at={at}", content=debug.data, headers=CBOR
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "policy.debug")


@requires_real
@pytest.mark.parametrize(
    ("kind", "codes"),
    [
        ("badsig", {"signature.invalid"}),
        ("pcr-bitflip", {"signature.invalid"}),
        ("malformed-as-published", {"cbor.truncated", "cbor.invalid"}),
    ],
)
def test_real_negatives(kind: str, codes: set[str], real_client: TestClient) -> None:
    vector = NEGATIVE[kind]
    at = _iso(vector.timestamp)
    response = real_client.post(
        f"/v1/verify?policy=wrong-pcr&at={at}", content=vector.data, headers=CBOR
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] in codes


@requires_real
@pytest.mark.parametrize("vector", TPM, ids=lambda v: v.name)
def test_nitrotpm_refused_as_wrong_kind(vector: RealVector, real_client: TestClient) -> None:
    at = _iso(vector.timestamp)
    response = real_client.post(
        f"/v1/verify?policy=wrong-pcr&at={at}", content=vector.data, headers=CBOR
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "document.nitrotpm")


# --- synthetic documents: nonce, clock, freshness, mutations ------------------------------------


@pytest.fixture(scope="module")
def service_factory() -> DocumentFactory:
    return DocumentFactory.create(seed=11, not_before=datetime(2025, 6, 1, 8, 0, tzinfo=UTC))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def synthetic(
    service_factory: DocumentFactory, tmp_path: Path
) -> Callable[..., tuple[TestClient, Clock]]:
    root = tmp_path / "test-root.pem"
    root.write_bytes(service_factory.root_pem)
    pcrs = default_pcrs(service_factory.pki.instance_id)

    def make(**service: Any) -> tuple[TestClient, Clock]:
        clock = Clock(service_factory.timestamp + timedelta(seconds=30))
        config = {
            "service": {"trust_roots": ["test-root.pem"], **service},
            "policies": {
                "app": {"pcrs": _pcr_table(pcrs), "max_age_seconds": 120},
                "app-v2": {"pcr_sets": [{"0": "cd" * 48}, _pcr_table(pcrs, (0,))]},
            },
        }
        return _client(config, base_dir=tmp_path, clock=clock), clock

    return make


def test_synthetic_verifies_at_the_service_clock(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    client, clock = synthetic()
    document = service_factory.document(user_data=b"hello", public_key=b"\x04" * 65)
    response = client.post("/v1/verify?policy=app", content=document, headers=CBOR)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_data"] == b"hello".hex()
    assert body["public_key"] == ("04" * 65)
    assert body["verified_at"] == _iso(clock.now).replace("Z", ".000Z")
    # Any one of a policy's PCR sets may match.
    assert (
        client.post("/v1/verify?policy=app-v2", content=document, headers=CBOR).status_code == 200
    )
    # Past max_age_seconds (120) the same document is stale.
    clock.now += timedelta(minutes=5)
    stale = client.post("/v1/verify?policy=app", content=document, headers=CBOR)
    assert (stale.status_code, stale.json()["error"]["code"]) == (422, "policy.stale")


def test_nonce_from_query_and_json(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    client, _ = synthetic()
    nonce = b"\x01\x02challenge"
    document = service_factory.document(nonce=nonce)
    ok = client.post(f"/v1/verify?policy=app&nonce={nonce.hex()}", content=document, headers=CBOR)
    assert ok.status_code == 200
    assert ok.json()["nonce"] == nonce.hex()
    bad = client.post(f"/v1/verify?policy=app&nonce={'00' * 8}", content=document, headers=CBOR)
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "policy.nonce-mismatch")
    encoded = base64.b64encode(document).decode()
    upper = client.post(
        "/v1/verify", json={"document": encoded, "policy": "app", "nonce": nonce.hex().upper()}
    )
    assert upper.status_code == 200
    missing = client.post(
        "/v1/verify",
        json={
            "document": base64.b64encode(service_factory.document()).decode(),
            "policy": "app",
            "nonce": nonce.hex(),
        },
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (422, "policy.nonce-mismatch")


def test_at_override_only_when_enabled(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    document = service_factory.document()
    later = _iso(service_factory.timestamp + timedelta(days=2))
    client, _ = synthetic()
    refused = client.post(f"/v1/verify?policy=app&at={later}", content=document, headers=CBOR)
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "request.at-not-allowed")
    encoded = base64.b64encode(document).decode()
    refused_json = client.post(
        "/v1/verify", json={"document": encoded, "policy": "app", "at": later}
    )
    assert refused_json.json()["error"]["code"] == "request.at-not-allowed"

    audit, clock = synthetic(allow_at_override=True)
    clock.now = service_factory.timestamp + timedelta(days=30)  # the service's own clock: expired
    expired = audit.post("/v1/verify?policy=app", content=document, headers=CBOR)
    assert expired.json()["error"]["code"] == "chain.expired"
    at = _iso(service_factory.timestamp + timedelta(seconds=1)).lower()  # RFC 3339 allows t/z
    ok = audit.post(f"/v1/verify?policy=app&at={at}", content=document, headers=CBOR)
    assert ok.status_code == 200, ok.text
    two_days = audit.post(f"/v1/verify?policy=app&at={later}", content=document, headers=CBOR)
    assert two_days.json()["error"]["code"] == "chain.expired"
    for bad in ("yesterday", "2025-06-01T09:14:00", "2025-13-01T00:00:00Z", "2025-06-01T25:00:00Z"):
        response = audit.post(
            "/v1/verify", params={"policy": "app", "at": bad}, content=document, headers=CBOR
        )
        assert (response.status_code, response.json()["error"]["code"]) == (400, "request.at"), bad


# A mutated certificate can carry a country name of the wrong length, which cryptography
# reports with a UserWarning while the library parses it (and then refuses the chain); that
# warning is the library's, not a service failure, so it does not fail this test.
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_corpus_like_cases_never_pass_or_crash(
    data: st.DataObject,
    synthetic: Callable[..., tuple[TestClient, Clock]],
    service_factory: DocumentFactory,
) -> None:
    # Valid documents with the policy's PCRs verify at their own time; broken ones (bit flips,
    # truncation, trailing bytes, wrong protected header) are refused with a library code.
    client, _ = synthetic(allow_at_override=True)
    pcrs = default_pcrs(service_factory.pki.instance_id)
    if data.draw(st.booleans(), label="valid"):
        document = data.draw(valid_documents(service_factory, pcrs=st.just(pcrs)))
        expected = 200
    else:
        document = data.draw(broken_documents(service_factory))
        expected = 422
    at = (
        _iso(AttestationDocument.parse(document).timestamp)
        if expected == 200
        else _iso(service_factory.timestamp)
    )
    response = client.post(f"/v1/verify?policy=app&at={at}", content=document, headers=CBOR)
    assert response.status_code == expected, response.text
    if expected == 422:
        code = response.json()["error"]["code"]
        assert code.split(".")[0] in {
            "cbor",
            "envelope",
            "payload",
            "document",
            "signature",
            "chain",
        }


# --- the conformance corpus (vectors/corpus), through the service ------------------------------


def _corpus_cases() -> list[corpus.Case]:
    # Service policies are PCR sets, max age and debug; a nonce comes with the request. Cases
    # that need a user_data/public_key matcher or no freshness bound are the library's to test,
    # and so is an expected *empty* nonce, which the service refuses as a request (400: it
    # would prove nothing; see test_malformed_cbor_requests).
    return [
        case
        for case in corpus.cases()
        if case.policy_spec.user_data is None
        and case.policy_spec.public_key is None
        and case.policy_spec.max_age is not None
        and case.policy_spec.nonce != b""
    ]


CORPUS_CASES = _corpus_cases()


def _corpus_policy_name(case: corpus.Case) -> str:
    return "corpus." + case.id.replace("/", ".")


@pytest.fixture(scope="module")
def corpus_clients() -> dict[tuple[Path, ...], TestClient]:
    groups: dict[tuple[Path, ...], dict[str, Any]] = {}
    for case in CORPUS_CASES:
        policy = case.policy_spec
        assert policy.max_age is not None  # _corpus_cases keeps only those
        policies = groups.setdefault(case.root_paths, {})
        policies[_corpus_policy_name(case)] = {
            "pcrs": {str(index): value.hex() for index, value in policy.pcrs.items()},
            "max_age_seconds": policy.max_age.total_seconds(),
            "allow_debug": policy.allow_debug,
        }
    return {
        roots: _client(
            {
                # The largest body limit, so that oversize documents reach the verifier's own
                # size checks instead of the service's 413.
                "service": {
                    "allow_at_override": True,
                    "trust_roots": [str(root) for root in roots],
                    "max_body_bytes": 64 * 1024,
                },
                "policies": policies,
            },
            base_dir=corpus.CORPUS_DIR,
        )
        for roots, policies in groups.items()
    }


def test_corpus_is_mostly_expressible_as_service_policies() -> None:
    if not CORPUS_CASES:
        pytest.skip(f"no corpus at {corpus.CORPUS_DIR}")
    assert len(CORPUS_CASES) >= len(corpus.cases()) - 10


@pytest.mark.parametrize("case", CORPUS_CASES, ids=lambda case: case.id)
def test_corpus_case_through_the_service(
    case: corpus.Case, corpus_clients: dict[tuple[Path, ...], TestClient]
) -> None:
    client = corpus_clients[case.root_paths]
    params = {"policy": _corpus_policy_name(case), "at": case.at.isoformat()}
    if case.policy_spec.nonce is not None:
        params["nonce"] = case.policy_spec.nonce.hex()
    response = client.post("/v1/verify", params=params, content=case.document(), headers=CBOR)
    if case.expected_valid:
        assert response.status_code == 200, response.text
        assert response.json()["verified"] is True
    else:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == case.expected_code


# --- malformed requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "request.policy"),
        ("?policy=app&policy=app", "request.policy"),
        ("?policy=nope", "request.unknown-policy"),
        ("?policy=app&pcr0=00", "request.unknown-parameter"),
        ("?policy=app&nonce=abc", "request.nonce"),
        ("?policy=app&nonce=", "request.nonce"),
        ("?policy=app&nonce=zz", "request.nonce"),
        (f"?policy=app&nonce={'00' * 1025}", "request.nonce"),
        ("?policy=app&nonce=00&nonce=00", "request.nonce"),
    ],
)
def test_malformed_cbor_requests(
    query: str,
    code: str,
    synthetic: Callable[..., tuple[TestClient, Clock]],
    service_factory: DocumentFactory,
) -> None:
    client, _ = synthetic()
    response = client.post(f"/v1/verify{query}", content=service_factory.document(), headers=CBOR)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", "request.json"),
        (b"\xff\xfe", "request.json"),
        (b"[1, 2]", "request.json"),
        (b"[" * 5000 + b"]" * 5000, "request.json"),
        (b'{"policy": "app"}', "request.document"),
        (b'{"policy": "app", "document": 5}', "request.document"),
        (b'{"policy": "app", "document": "not base64!"}', "request.document"),
        (b'{"policy": "app", "document": "AAA"}', "request.document"),
        (b'{"document": "AAAA"}', "request.policy"),
        (b'{"document": "AAAA", "policy": ["app"]}', "request.policy"),
        (b'{"document": "AAAA", "policy": "nope"}', "request.unknown-policy"),
        (b'{"document": "AAAA", "policy": "app", "roots": []}', "request.unknown-field"),
        (b'{"document": "AAAA", "policy": "app", "nonce": 7}', "request.nonce"),
        (b'{"document": "AAAA", "policy": "app", "nonce": "0"}', "request.nonce"),
        (b'{"document": "AAAA", "policy": "app", "at": 0}', "request.at"),
    ],
)
def test_malformed_json_requests(
    body: bytes, code: str, synthetic: Callable[..., tuple[TestClient, Clock]]
) -> None:
    client, _ = synthetic()
    response = client.post("/v1/verify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


def test_json_with_query_parameters_is_refused(
    synthetic: Callable[..., tuple[TestClient, Clock]],
) -> None:
    client, _ = synthetic()
    response = client.post("/v1/verify?policy=app", json={"document": "AAAA", "policy": "app"})
    code = response.json()["error"]["code"]
    assert (response.status_code, code) == (400, "request.unknown-parameter")


def test_garbage_documents_are_422_with_parse_codes(
    synthetic: Callable[..., tuple[TestClient, Clock]],
) -> None:
    client, _ = synthetic()
    for body, code in [
        (b"", "document.size"),
        (b"\x80", "envelope.wrong-length"),
        (b"\xa0", "envelope.not-array"),
        (b"\x84", "cbor.truncated"),
    ]:
        response = client.post("/v1/verify?policy=app", content=body, headers=CBOR)
        assert (response.status_code, response.json()["error"]["code"]) == (422, code), body
        assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "application/cbor-seq",
        "application/jsonx",
    ],
)
def test_wrong_content_type_is_415(
    content_type: str | None,
    synthetic: Callable[..., tuple[TestClient, Clock]],
    service_factory: DocumentFactory,
) -> None:
    client, _ = synthetic()
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(
        "/v1/verify?policy=app", content=service_factory.document(), headers=headers
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "request.content-type"


def test_content_type_parameters_and_case_are_accepted(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    client, _ = synthetic()
    response = client.post(
        "/v1/verify?policy=app",
        content=service_factory.document(),
        headers={"content-type": "Application/CBOR; foo=bar"},
    )
    assert response.status_code == 200


def test_oversize_bodies_are_413(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    client, _ = synthetic()
    limit = 16 * 1024
    response = client.post("/v1/verify?policy=app", content=b"\0" * (limit + 1), headers=CBOR)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "request.too-large")
    # Exactly at the limit is read and handed to the verifier (which refuses zero bytes).
    at_limit = client.post("/v1/verify?policy=app", content=b"\0" * limit, headers=CBOR)
    assert at_limit.status_code == 422

    # Chunked, with no Content-Length: refused while streaming.
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * 1024

    chunked = client.post("/v1/verify?policy=app", content=chunks(), headers=CBOR)
    assert (chunked.status_code, chunked.json()["error"]["code"]) == (413, "request.too-large")

    small, _ = synthetic(max_body_bytes=1000)
    document = service_factory.document()
    assert small.post("/v1/verify?policy=app", content=document, headers=CBOR).status_code == 413
    encoded = base64.b64encode(document).decode()
    big_json = small.post("/v1/verify", json={"document": encoded, "policy": "app"})
    assert big_json.status_code == 413


def test_routing_errors_are_json(synthetic: Callable[..., tuple[TestClient, Clock]]) -> None:
    client, _ = synthetic()
    missing = client.get("/v2/verify")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "request.not-found")
    wrong_method = client.get("/v1/verify")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


# --- health, metrics, OpenAPI, access log ---------------------------------------------------------


def test_healthz_and_openapi(synthetic: Callable[..., tuple[TestClient, Clock]]) -> None:
    client, _ = synthetic()
    health = client.get("/healthz")
    assert health.json() == {"status": "ok", "policies": ["app", "app-v2"]}
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    post = schema["paths"]["/v1/verify"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/cbor", "application/json"}
    assert set(post["responses"]) == {"200", "400", "413", "415", "422"}
    assert post["parameters"][0]["schema"]["enum"] == ["app", "app-v2"]


def _metric(text: str, prefix: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    assert values, f"no series {prefix!r} in:\n{text}"
    return sum(values)


def test_metrics_count_outcomes_codes_latency_and_cache(
    synthetic: Callable[..., tuple[TestClient, Clock]], service_factory: DocumentFactory
) -> None:
    client, _ = synthetic()
    document = service_factory.document()
    for _ in range(3):
        assert (
            client.post("/v1/verify?policy=app", content=document, headers=CBOR).status_code == 200
        )
    flipped = document[:-1] + bytes([document[-1] ^ 1])  # last byte of the signature
    client.post("/v1/verify?policy=app", content=flipped, headers=CBOR)
    client.post("/v1/verify?policy=nope", content=document, headers=CBOR)
    client.post("/v1/verify?policy=app", content=document, headers={"content-type": "text/plain"})
    client.get("/healthz")
    client.get("/some/scanner/path")
    text = client.get("/metrics").text
    assert 'outcome="verified",code="ok"} 3' in text
    assert 'status="422",outcome="rejected",code="signature.invalid"} 1' in text
    assert 'outcome="bad_request",code="request.unknown-policy"} 1' in text
    assert 'outcome="unsupported_media_type",code="request.content-type"} 1' in text
    assert 'route="other",status="404"' in text
    assert _metric(text, "nitro_attest_verify_duration_seconds_count") == 6
    assert _metric(text, 'nitro_attest_verify_duration_seconds_bucket{le="+Inf"}') == 6
    # Three verifications of one chain: one cold validation, then hits.
    assert _metric(text, "nitro_attest_chain_cache_misses_total") == 1
    assert _metric(text, "nitro_attest_chain_cache_hits_total") == 3  # the flipped one too
    assert "# TYPE nitro_attest_verify_duration_seconds histogram" in text


def test_access_log_is_structured_and_has_no_body(
    synthetic: Callable[..., tuple[TestClient, Clock]],
    service_factory: DocumentFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _ = synthetic()
    nonce = b"secret-nonce-value"
    document = service_factory.document(nonce=nonce, user_data=b"user-data-marker")
    encoded = base64.b64encode(document).decode()
    with caplog.at_level(logging.INFO, logger="attestation.service.access"):
        client.post(f"/v1/verify?policy=app&nonce={nonce.hex()}", content=document, headers=CBOR)
        client.post("/v1/verify", json={"document": encoded, "policy": "app", "nonce": "00"})
    lines = [r.getMessage() for r in caplog.records if r.name == "attestation.service.access"]
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["status"] == 200 and first["outcome"] == "verified" and first["policy"] == "app"
    assert first["body_bytes"] == len(document)
    assert second["code"] == "policy.nonce-mismatch" and second["status"] == 422
    joined = "\n".join(lines)
    for secret in (nonce.hex(), encoded[:40], b"user-data-marker".hex(), "user-data-marker"):
        assert secret not in joined


def test_access_log_can_be_turned_off(
    synthetic: Callable[..., tuple[TestClient, Clock]], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = synthetic(access_log=False)
    with caplog.at_level(logging.INFO, logger="attestation.service.access"):
        client.get("/healthz")
    assert not [r for r in caplog.records if r.name == "attestation.service.access"]


# --- configuration ------------------------------------------------------------------------------

PCR = "aa" * 48


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"policies": {}}, "no [policies.NAME] table"),
        ({"service": {"listen": "8080"}, "policies": {"a": {"pcrs": {"0": PCR}}}}, "HOST:PORT"),
        ({"service": {"listen": "h:99999"}, "policies": {"a": {"pcrs": {"0": PCR}}}}, "0..65535"),
        (
            {"service": {"lisen": "h:1"}, "policies": {"a": {"pcrs": {"0": PCR}}}},
            "unknown key(s) lisen",
        ),
        (
            {"service": {"max_body_bytes": 0}, "policies": {"a": {"pcrs": {"0": PCR}}}},
            "max_body_bytes",
        ),
        (
            {"service": {"max_body_bytes": "16k"}, "policies": {"a": {"pcrs": {"0": PCR}}}},
            "max_body_bytes",
        ),
        (
            {"service": {"allow_at_override": "yes"}, "policies": {"a": {"pcrs": {"0": PCR}}}},
            "true or false",
        ),
        ({"service": {"trust_roots": []}, "policies": {"a": {"pcrs": {"0": PCR}}}}, "trust_roots"),
        (
            {
                "service": {"trust_roots": ["/nonexistent.pem"]},
                "policies": {"a": {"pcrs": {"0": PCR}}},
            },
            "nonexistent.pem",
        ),
        ({"policies": {"a": {}}}, "exactly one of pcrs"),
        (
            {"policies": {"a": {"pcrs": {"0": PCR}, "pcr_sets": [{"0": PCR}]}}},
            "exactly one of pcrs",
        ),
        ({"policies": {"a": {"pcrs": {}}}}, "at least one PCR"),
        ({"policies": {"a": {"pcr_sets": []}}}, "non-empty array"),
        ({"policies": {"a": {"pcrs": {"32": PCR}}}}, "not a PCR index"),
        ({"policies": {"a": {"pcrs": {"x": PCR}}}}, "not a PCR index"),
        ({"policies": {"a": {"pcrs": {"0": "zz"}}}}, "not hex"),
        ({"policies": {"a": {"pcrs": {"0": "aa" * 20}}}}, "32, 48 or 64 bytes"),
        ({"policies": {"a": {"pcrs": {"0": 5}}}}, "hex string"),
        ({"policies": {"a": {"pcrs": {"0": PCR}, "max_age_seconds": 0}}}, "max_age_seconds"),
        ({"policies": {"a": {"pcrs": {"0": PCR}, "max_age_seconds": 86400}}}, "max_age_seconds"),
        ({"policies": {"a": {"pcrs": {"0": PCR}, "max_age_seconds": True}}}, "max_age_seconds"),
        ({"policies": {"a": {"pcrs": {"0": PCR}, "allow_debug": 1}}}, "allow_debug"),
        ({"policies": {"a": {"pcrs": {"0": PCR}, "nonce": "00"}}}, "unknown key(s) nonce"),
        ({"policies": {"bad name": {"pcrs": {"0": PCR}}}}, "policy name"),
        ({"policies": {"a": {"pcrs": {"0": PCR}}}, "extra": {}}, "unknown key(s) extra"),
    ],
)
def test_config_errors_are_clear(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_config(config, source="svc.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("svc.toml")


def test_config_defaults_and_listen_forms() -> None:
    config = parse_config({"policies": {"a": {"pcrs": {"0": PCR}}}})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.max_body_bytes == 16384
    assert config.allow_at_override is False
    assert config.policies["a"].allow_debug is False
    assert config.policies["a"].max_age == timedelta(minutes=5)
    assert config.uses_aws_root and len(config.roots) == 1
    v6 = parse_config(
        {"service": {"listen": "[::1]:9000"}, "policies": {"a": {"pcrs": {"0": PCR}}}}
    )
    assert (v6.host, v6.port) == ("::1", 9000)
    override = parse_config({"policies": {"a": {"pcrs": {"0": PCR}}}}, listen="0.0.0.0:1")
    assert (override.host, override.port) == ("0.0.0.0", 1)


def test_example_config_and_file_errors(tmp_path: Path) -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert set(config.policies) == {"price-oracle", "price-oracle-rollout"}
    assert config.allow_at_override is False
    assert len(config.policies["price-oracle-rollout"].pcr_sets) == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("[service\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad_root = tmp_path / "root.toml"
    (tmp_path / "root.pem").write_text("not a certificate")
    bad_root.write_text(
        '[service]\ntrust_roots = ["root.pem"]\n[policies.a]\npcrs = {0 = "' + PCR + '"}\n'
    )
    with pytest.raises(ConfigError, match=r"root\.pem"):
        load_config(bad_root)


def test_serve_check_and_config_error_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attestation._cli import main as cli_main

    args = ["serve", "--config", str(EXAMPLE_CONFIG), "--check", "--listen", "127.0.0.1:9999"]
    assert cli_main(args) == 0
    assert "config ok: 2 policies" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[policies.a]\npcrs = {0 = 'zz'}\n")
    assert cli_main(["serve", "--config", str(bad)]) == 2
    assert "config error" in capsys.readouterr().err


def test_app_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ConfigError, match=CONFIG_ENV):
        app_from_environment()
    monkeypatch.setenv(CONFIG_ENV, str(EXAMPLE_CONFIG))
    access = logging.getLogger("attestation.service.access")
    before = (list(access.handlers), access.level, access.propagate)
    try:
        with TestClient(app_from_environment()) as client:
            assert client.get("/healthz").json()["policies"] == [
                "price-oracle",
                "price-oracle-rollout",
            ]
    finally:
        access.handlers[:], access.level, access.propagate = before[0], before[1], before[2]


# --- the real server: uvicorn, one process ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@requires_real
def test_uvicorn_end_to_end(tmp_path: Path) -> None:
    vector = next(v for v in ENCLAVE if not v.debug)
    pcrs = dict(AttestationDocument.parse(vector.data).pcrs)
    config = tmp_path / "service.toml"
    table = ", ".join(f'{k} = "{v}"' for k, v in _pcr_table(pcrs).items())
    config.write_text(
        f"[service]\nallow_at_override = true\n[policies.real]\npcrs = {{ {table} }}\n"
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attestation.service",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "service did not start"
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{base}/v1/verify?policy=real&at={_iso(vector.timestamp)}",
            data=vector.data,
            headers=CBOR,
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["module_id"] == vector.entry["module_id"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(
                    f"{base}/v1/verify?policy=real", data=vector.data, headers=CBOR, method="POST"
                ),
                timeout=5,
            )
        assert refused.value.code == 422
        refused.value.close()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert [(a["path"], a["status"]) for a in access if a["path"] == "/v1/verify"] == [
        ("/v1/verify", 200),
        ("/v1/verify", 422),
    ]
    assert "config ok: 1 policies" in stderr
    assert "allow_at_override is on" in stderr
    assert vector.data.hex()[:64] not in stderr
