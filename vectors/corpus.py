"""Read the vectors: the generated conformance corpus and the real AWS documents.

One API for every consumer (tests, benches, the service tests):

    from vectors import corpus

    for case in corpus.cases():              # vectors/corpus/manifest.json, in manifest order
        verifier = Verifier(roots=case.trust_roots())
        verifier.verify(case.document(), policy=case.policy(), at=case.at, kind=case.kind)

    for doc in corpus.real_documents(kind="nitro-enclave"):   # vectors/real/MANIFEST.json
        ...

`PolicySpec` is a case's policy as data, the manifest's JSON form in both directions
(`from_json` / `to_json`, used by the generator too), and `PolicySpec.build()` is the one place
where that form becomes an `attestation.Policy`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from attestation import (
    AttestationError,
    NitroTpmPolicy,
    Policy,
    VerificationPolicy,
    Verifier,
    load_pem_roots,
)
from attestation.document import DocumentKind

__all__ = [
    "CORPUS_DIR",
    "REAL_DIR",
    "Case",
    "PolicySpec",
    "RealDocument",
    "cases",
    "manifest",
    "real_documents",
    "real_manifest",
]

_HERE = Path(__file__).resolve().parent
#: The generated corpus (`vectors/generate.py` writes it).
CORPUS_DIR = _HERE / "corpus"
#: The real AWS-signed documents, copied byte for byte from the repositories the manifest names.
REAL_DIR = _HERE / "real"

_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The freshness bound of most generated cases (the `Policy` default).
DEFAULT_MAX_AGE = timedelta(minutes=5)


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unhex(value: object) -> bytes | None:
    return None if value is None else bytes.fromhex(str(value))


def _pcr_set(data: Mapping[str, str]) -> dict[int, bytes]:
    return {int(index): bytes.fromhex(value) for index, value in data.items()}


def _kind(value: object) -> DocumentKind:
    if value == "nitrotpm":
        return "nitrotpm"
    if value == "nitro-enclave":
        return "nitro-enclave"
    raise ValueError(f"unknown document kind {value!r}")


@dataclass(frozen=True)
class PolicySpec:
    """A policy as data: what `Policy(...)` takes, in a form any language can read.

    `pcrs` is one PCR set (index -> value), or a tuple of sets of which any one may match
    (`Policy(pcrs=[...])`; `pcr_sets` gives either form as a tuple). `None` means "not checked"
    for `nonce`, `user_data`, `public_key` and `max_age`; an empty byte string is an expected
    empty value, which a null or absent field never matches.
    `kind` is the document kind the verification asks for: for `"nitrotpm"`, `pcrs` are the
    expected `nitrotpm_pcrs` registers and the policy is a `NitroTpmPolicy`.
    """

    pcrs: Mapping[int, bytes] | tuple[Mapping[int, bytes], ...]
    nonce: bytes | None = None
    max_age: timedelta | None = DEFAULT_MAX_AGE
    allow_debug: bool = False
    user_data: bytes | None = None
    public_key: bytes | None = None
    kind: DocumentKind = "nitro-enclave"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicySpec:
        """The manifest's `policy` object (see vectors/README.md)."""
        max_age_ms = data["max_age_ms"]
        pcrs = data["pcrs"]
        return cls(
            pcrs=tuple(_pcr_set(s) for s in pcrs) if isinstance(pcrs, list) else _pcr_set(pcrs),
            nonce=_unhex(data["nonce"]),
            max_age=None if max_age_ms is None else timedelta(milliseconds=max_age_ms),
            allow_debug=bool(data["allow_debug"]),
            user_data=_unhex(data["user_data"]),
            public_key=_unhex(data["public_key"]),
            kind=_kind(data.get("kind", "nitro-enclave")),
        )

    def to_json(self) -> dict[str, object]:
        """The manifest's `policy` object, keys in the manifest's order (`kind` only if not the
        default, so that enclave cases read the same as before NitroTPM cases existed)."""
        sets = [{str(i): v.hex() for i, v in sorted(s.items())} for s in self.pcr_sets]
        out: dict[str, object] = {
            "pcrs": sets if isinstance(self.pcrs, tuple) else sets[0],
            "nonce": _hex(self.nonce),
            "max_age_ms": None if self.max_age is None else self.max_age // _MS,
            "allow_debug": self.allow_debug,
            "user_data": _hex(self.user_data),
            "public_key": _hex(self.public_key),
        }
        if self.kind != "nitro-enclave":
            out["kind"] = self.kind
        return out

    @property
    def pcr_sets(self) -> tuple[Mapping[int, bytes], ...]:
        """The PCR sets, any one of which may match (one set is a tuple of one)."""
        return self.pcrs if isinstance(self.pcrs, tuple) else (self.pcrs,)

    def build(self) -> VerificationPolicy:
        """The `attestation.Policy` (or `NitroTpmPolicy`) this spec describes."""
        sets = [dict(s) for s in self.pcr_sets]
        if self.kind == "nitrotpm":
            if self.allow_debug:
                raise ValueError("a NitroTPM policy has no allow_debug")
            return NitroTpmPolicy(
                pcrs=sets if isinstance(self.pcrs, tuple) else sets[0],
                nonce=self.nonce,
                max_age=self.max_age,
                user_data=self.user_data,
                public_key=self.public_key,
            )
        return Policy(
            pcrs=sets if isinstance(self.pcrs, tuple) else sets[0],
            nonce=self.nonce,
            max_age=self.max_age,
            allow_debug=self.allow_debug,
            user_data=self.user_data,
            public_key=self.public_key,
        )


@dataclass(frozen=True)
class Case:
    """One case of the generated corpus, as the manifest describes it."""

    id: str
    family: str
    description: str
    document_path: Path
    document_sha256: str
    at: datetime
    root_paths: tuple[Path, ...]
    policy_spec: PolicySpec
    expected_valid: bool
    expected_code: str | None
    """None when the document must verify."""

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], *, base: Path) -> Case:
        expected = entry["expected"]
        return cls(
            id=entry["id"],
            family=entry["family"],
            description=entry["description"],
            document_path=base / entry["document"],
            document_sha256=entry["document_sha256"],
            at=datetime.fromisoformat(entry["at"]),  # Python >= 3.11 reads the "Z"
            root_paths=tuple(base / name for name in entry["roots"]),
            policy_spec=PolicySpec.from_json(entry["policy"]),
            expected_valid=bool(expected["valid"]),
            expected_code=expected.get("error_code"),
        )

    @property
    def expected(self) -> dict[str, object]:
        """The manifest's `expected` object: `{"valid": true}` or `{"valid": false, ...}`."""
        if self.expected_valid:
            return {"valid": True}
        return {"valid": False, "error_code": self.expected_code}

    def document(self) -> bytes:
        """The document's bytes, read from the corpus."""
        return self.document_path.read_bytes()

    def policy(self) -> VerificationPolicy:
        """The case's policy as an `attestation.Policy` (`NitroTpmPolicy` for NitroTPM cases)."""
        return self.policy_spec.build()

    @property
    def kind(self) -> DocumentKind:
        """The document kind the case's verification asks for."""
        return self.policy_spec.kind

    def trust_roots(self) -> list[x509.Certificate]:
        """The only trust anchors of this case."""
        return [root for path in self.root_paths for root in load_pem_roots(path.read_bytes())]

    def outcome(self) -> dict[str, object]:
        """What this repository's verifier says, in the form of `expected`.

        A fresh verifier per call, so that one case's cached chain cannot decide another's.
        """
        verifier = Verifier(roots=self.trust_roots())
        try:
            verifier.verify(self.document(), policy=self.policy(), at=self.at, kind=self.kind)
        except AttestationError as exc:
            return {"valid": False, "error_code": exc.code}
        return {"valid": True}


def manifest(corpus_dir: Path = CORPUS_DIR) -> dict[str, Any]:
    """The corpus manifest as JSON (empty when the corpus has not been generated)."""
    path = corpus_dir / "manifest.json"
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def cases(corpus_dir: Path = CORPUS_DIR) -> list[Case]:
    """Every case of the corpus in `corpus_dir`, in manifest order."""
    entries = manifest(corpus_dir).get("cases", [])
    return [Case.from_json(entry, base=corpus_dir) for entry in entries]


# --- The real documents ----------------------------------------------------------------------


@dataclass(frozen=True)
class RealDocument:
    """One real AWS-signed document with its manifest entry (provenance and known facts)."""

    entry: Mapping[str, Any] = field(repr=False)
    data: bytes = field(repr=False)

    @property
    def name(self) -> str:
        """The file name relative to `vectors/real/` (negatives start with `negative/`)."""
        return str(self.entry["file"])

    @property
    def kind(self) -> str:
        """`nitro-enclave` or `nitrotpm`."""
        return str(self.entry["doc_kind"])

    @property
    def negative(self) -> bool:
        """A published broken document (`negative/`)."""
        return self.name.startswith("negative/")

    @property
    def timestamp(self) -> datetime:
        """The document's own timestamp, recorded in the manifest."""
        return _EPOCH + int(self.entry["known_timestamp_ms"]) * _MS

    @property
    def window(self) -> tuple[datetime, datetime]:
        """When every certificate of its chain is valid."""
        start, end = self.entry["chain_valid_window_utc"]
        return datetime.fromisoformat(start), datetime.fromisoformat(end)

    @property
    def debug(self) -> bool:
        """A debug-mode enclave's document (PCR0 all zero)."""
        return str(self.entry.get("enclave_mode", "")).startswith("debug")


def real_manifest(real_dir: Path = REAL_DIR) -> list[dict[str, Any]]:
    """`MANIFEST.json` of the real documents (empty when the directory is missing)."""
    path = real_dir / "MANIFEST.json"
    if not path.is_file():
        return []
    entries: list[dict[str, Any]] = json.loads(path.read_text())
    return entries


def real_documents(
    *, kind: str | None = None, negative: bool | None = False, real_dir: Path = REAL_DIR
) -> list[RealDocument]:
    """The real documents of `kind` (any kind if None), in manifest order.

    `negative=False` (the default) gives the genuine documents, `True` the published broken
    ones, `None` both. Each file is checked against the manifest's SHA-256, so a damaged copy
    fails loudly instead of turning into a verification failure.
    """
    out = []
    for entry in real_manifest(real_dir):
        if entry.get("doc_kind") not in {"nitro-enclave", "nitrotpm"}:
            continue  # the trust anchor has its own entry
        if kind is not None and entry["doc_kind"] != kind:
            continue
        document = RealDocument(entry, (real_dir / entry["file"]).read_bytes())
        if negative is not None and document.negative != negative:
            continue
        if hashlib.sha256(document.data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{real_dir / document.name}: SHA-256 differs from MANIFEST.json")
        out.append(document)
    return out
