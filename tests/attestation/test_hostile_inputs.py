"""Crafted inputs that got past the verifier library or crashed the CLI, one test each.

Documents are signed for real (a synthetic PKI, or a raw-DER chain from
`test_chain_property`), so each reaches the check it is about.
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attestation import (
    AttestationDocument,
    AttestationError,
    ChainError,
    MalformedDocument,
    PolicyError,
    UnsafeNoPcrCheck,
    Verifier,
    load_pem_roots,
)
from attestation._cbor import CborError, decode
from attestation._cli import main
from attestation.builder import encode_payload, sign_payload
from attestation.policy import Policy
from attestation.testing import DocumentFactory, default_pcrs
from tests.attestation.test_chain_property import AT, signed_document

FACTORY = DocumentFactory.create(seed=10, not_before=datetime(2025, 6, 1, 8, 0, tzinfo=UTC))
PCRS = default_pcrs(FACTORY.pki.instance_id)


def _verifier() -> Verifier:
    return Verifier(roots=load_pem_roots(FACTORY.root_pem))


def _payload(*, certificate: bytes = FACTORY.leaf.der) -> bytes:
    return encode_payload(
        module_id=FACTORY.module_id,
        timestamp_ms=int(FACTORY.timestamp.timestamp() * 1000),
        pcrs=PCRS,
        certificate=certificate,
        cabundle=FACTORY.pki.cabundle,
        indefinite=True,
    )


def _signed(payload: bytes) -> bytes:
    return sign_payload(payload, FACTORY.leaf.key)


def _policy(**kwargs: object) -> Policy:
    return Policy(pcrs={1: PCRS[1]}, max_age=None, **kwargs)  # type: ignore[arg-type]


# --- CBOR and envelope --------------------------------------------------------------------


def test_indefinite_text_chunk_may_not_split_a_character() -> None:
    # "é" is c3 a9; RFC 8949 §3.2.3: a chunk boundary only between code points.
    assert decode(bytes.fromhex("7f62c3a9ff")) == "é"
    with pytest.raises(CborError) as caught:
        decode(bytes.fromhex("7f61c361a9ff"))
    assert caught.value.code == "cbor.invalid"


def test_split_character_in_a_signed_payload_is_refused() -> None:
    payload = _payload()
    module_id = b"\x78" + bytes([len(FACTORY.module_id)]) + FACTORY.module_id.encode()
    if module_id not in payload:  # short module ids have a one-byte head
        module_id = bytes([0x60 + len(FACTORY.module_id)]) + FACTORY.module_id.encode()
    split = b"\x7f\x61\xc3\x61\xa9\xff"
    document = _signed(payload.replace(module_id, split, 1))
    with pytest.raises(MalformedDocument) as caught:
        _verifier().verify(document, policy=_policy(), at=FACTORY.timestamp)
    assert caught.value.code == "cbor.invalid"


@pytest.mark.parametrize("value", [b"\xf6", b"\xa1\x00" + b"\x58\x30" + bytes(48)])
def test_nitrotpm_pcrs_beside_pcrs_is_refused(value: bytes) -> None:
    payload = _payload()
    assert payload.endswith(b"\xff")
    key = b"\x6dnitrotpm_pcrs"
    document = _signed(payload[:-1] + key + value + b"\xff")
    with pytest.raises(MalformedDocument) as caught:
        AttestationDocument.parse(document)
    assert caught.value.code == "payload.unknown-field"


@pytest.mark.parametrize(
    "head",
    ["d2", "d812", "d90012", "da00000012", "db0000000000000012"],
)
def test_tag_18_in_any_head_form_is_accepted(head: str) -> None:
    document = bytes.fromhex(head) + FACTORY.document()
    doc = _verifier().verify(document, policy=_policy(), at=FACTORY.timestamp)
    assert doc.raw == document
    assert AttestationDocument.parse(document).tagged


@pytest.mark.parametrize("head", ["d813", "d90013", "d812d2", "d2d812", "d8", "d900"])
def test_other_or_repeated_tags_are_refused(head: str) -> None:
    with pytest.raises(MalformedDocument) as caught:
        AttestationDocument.parse(bytes.fromhex(head) + FACTORY.document())
    assert caught.value.code in {"envelope.tag", "cbor.truncated"}


# --- certificates -------------------------------------------------------------------------


def _serial_offset(der: bytes | bytearray) -> int:
    """Offset of the first content byte of the TBS serial (after [0] version)."""
    tbs = 4  # 30 82 LL LL
    tbs += 4  # 30 82 LL LL
    assert der[tbs : tbs + 5] == bytes.fromhex("a003020102")
    assert der[tbs + 5] == 0x02
    return tbs + 7


@pytest.mark.parametrize("first", [0x80, 0xFF])
def test_negative_serial_is_malformed_not_a_warning(first: int) -> None:
    # What `test_broken_documents_never_verify[payload_byte_flip]` hit by chance: a flipped
    # byte made the leaf's serial negative, and cryptography warns about that while parsing.
    leaf = bytearray(FACTORY.leaf.der)
    leaf[_serial_offset(leaf)] = first
    document = _signed(_payload(certificate=bytes(leaf)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ChainError) as caught:
            _verifier().verify(document, policy=_policy(), at=FACTORY.timestamp)
    assert caught.value.code == "chain.certificate-malformed"
    assert "serial" in caught.value.reason


# --- policy -------------------------------------------------------------------------------


def _debug_document() -> bytes:
    return FACTORY.document(pcrs={**PCRS, 0: bytes(48)})


def test_several_pcr_sets_with_allow_debug_accept_a_matching_debug_document() -> None:
    other: dict[int, bytes | str] = {1: "ab" * 48}
    matching: dict[int, bytes | str] = {1: PCRS[1]}
    document = _debug_document()
    verifier = _verifier()
    for sets in ([other, matching], [matching, other]):
        policy = Policy(pcrs=sets, allow_debug=True, max_age=None)
        assert verifier.verify(document, policy=policy, at=FACTORY.timestamp).is_debug
        with pytest.raises(PolicyError) as refused:
            verifier.verify(document, policy=Policy(pcrs=sets, max_age=None), at=FACTORY.timestamp)
        assert refused.value.code == "policy.debug"
    with pytest.raises(PolicyError) as caught:
        verifier.verify(
            document,
            policy=Policy(pcrs=[other, {1: "cd" * 48}], allow_debug=True, max_age=None),
            at=FACTORY.timestamp,
        )
    assert caught.value.code == "policy.pcr-mismatch"


# --- the CLI: one line and an exit code, never a traceback --------------------------------


@pytest.mark.parametrize("kind", ["utf8-overlong", "teletex-8bit", "sequence-value"])
@pytest.mark.parametrize("position", ["leaf", "instance"])
def test_verify_json_on_an_undecodable_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], position: str, kind: str
) -> None:
    document, root = signed_document(position, kind, PCRS)
    (tmp_path / "doc.cbor").write_bytes(document)
    (tmp_path / "root.pem").write_bytes(root)
    at = AT.isoformat()
    base = ["verify", str(tmp_path / "doc.cbor"), "--root", str(tmp_path / "root.pem")]
    args = [*base, "--at", at, "--max-age", "none", "--unsafe-no-pcr-check", "--allow-debug"]
    assert main([*args, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"]["code"] == "chain.certificate-malformed"
    assert "ParseError" not in out["error"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("REFUSED chain.certificate-malformed")


def test_inspect_shows_an_undecodable_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document, _ = signed_document("leaf", "utf8-lone-surrogate", PCRS)
    (tmp_path / "doc.cbor").write_bytes(document)
    assert main(["inspect", "--json", str(tmp_path / "doc.cbor")]) == 0
    rows = json.loads(capsys.readouterr().out)["certificates"]
    assert "undecodable subject" in rows[0]["subject"]


@pytest.mark.parametrize("version", [1, 5])  # v2, and no version at all
def test_inspect_a_leaf_of_another_x509_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int
) -> None:
    leaf = bytearray(FACTORY.leaf.der)
    offset = _serial_offset(leaf) - 3  # the version INTEGER's value
    leaf[offset] = version
    document = _signed(_payload(certificate=bytes(leaf)))
    (tmp_path / "doc.cbor").write_bytes(document)
    assert main(["inspect", str(tmp_path / "doc.cbor")]) == 0
    out = capsys.readouterr().out
    assert f"X.509 version number {version}" in out
    assert main(["inspect", "--json", str(tmp_path / "doc.cbor")]) == 0
    assert "only v3" in json.loads(capsys.readouterr().out)["certificates"]
    root = tmp_path / "root.pem"
    root.write_bytes(FACTORY.root_pem)
    at = (FACTORY.timestamp + timedelta(seconds=1)).isoformat()
    argv = ["verify", str(tmp_path / "doc.cbor"), "--root", str(root), "--at", at]
    assert main([*argv, "--unsafe-no-pcr-check", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "chain.certificate-malformed"


CORPUS = Path(__file__).resolve().parents[2] / "vectors" / "corpus"


def _corpus() -> list[dict[str, object]]:
    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        return []
    cases: list[dict[str, object]] = json.loads(manifest.read_text())["cases"]
    return cases


@pytest.mark.skipif(not _corpus(), reason="vectors/corpus not generated")
def test_every_corpus_document_gets_an_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    for case in _corpus():
        document = str(CORPUS / str(case["document"]))
        roots = case["roots"]
        assert isinstance(roots, list)
        assert main(["inspect", document]) in (0, 1), case["id"]
        argv = ["verify", document, "--root", str(CORPUS / roots[0]), "--at", str(case["at"])]
        argv += ["--unsafe-no-pcr-check", "--max-age", "none", "--json"]
        assert main(argv) in (0, 1), case["id"]
        capsys.readouterr()


@pytest.mark.skipif(not _corpus(), reason="vectors/corpus not generated")
def test_corpus_reasons_carry_no_library_internals() -> None:
    policy = Policy(pcrs=UnsafeNoPcrCheck(), max_age=None, allow_debug=True)
    reasons = []
    for case in _corpus():
        roots = case["roots"]
        assert isinstance(roots, list)
        verifier = Verifier(
            roots=[r for n in roots for r in load_pem_roots((CORPUS / n).read_bytes())]
        )
        document = (CORPUS / str(case["document"])).read_bytes()
        try:
            verifier.verify(document, policy=policy, at=datetime.fromisoformat(str(case["at"])))
        except AttestationError as exc:
            reasons.append(exc.reason)
    assert reasons
    leaks = [r for r in reasons if any(k in r for k in ("ParseError", "<Certificate", "{ kind"))]
    assert leaks == []
