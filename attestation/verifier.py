"""Verify an attestation document: chain, signature, then the caller's policy.

```python
from datetime import datetime, timedelta, timezone
from attestation import Policy, Verifier

verifier = Verifier.aws()
doc = verifier.verify(
    data,
    policy=Policy(pcrs={0: "...", 1: "...", 2: "..."}, nonce=nonce, max_age=timedelta(minutes=5)),
    at=datetime.now(timezone.utc),
)
```

`verify` returns a `VerifiedDocument` only when every step passed; otherwise it raises an
`AttestationError` subclass whose `code` says which step failed.

For the common case, one call: `attestation.verify(data, pcrs={0: "..."}, nonce=nonce)`, over a
cached AWS-pinned verifier (one per thread, so its chain cache is never shared unlocked).

NitroTPM (EC2 instance) documents come from the same PKI in the same envelope but attest an
instance's boot, not an enclave: they verify only when asked for by name,
`verify(data, policy=NitroTpmPolicy(pcrs=...), kind="nitrotpm")`, and then an enclave document is
refused (`document.nitro-enclave`), as a NitroTPM one is by default (`document.nitrotpm`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation._chain import DEFAULT_CACHE_SIZE, CacheInfo, ChainValidator
from attestation.document import AttestationDocument, DocumentKind, VerifiedDocument
from attestation.errors import (
    DebugDocument,
    FutureDocument,
    InsecurePolicy,
    NotNitroTpmDocument,
    SignatureError,
    UnsupportedDocumentKind,
)
from attestation.policy import (
    PcrValue,
    Policy,
    UnsafeNoPcrCheck,
    VerificationPolicy,
    allows_debug,
    checks_nitrotpm_pcrs,
    checks_pcrs,
)
from attestation.roots import aws_nitro_root

__all__ = ["MAX_CLOCK_SKEW", "Verifier", "verify"]

_log = logging.getLogger("attestation.verifier")

# How far a document's timestamp may lie after the verification time: the NSM's clock and the
# verifier's are both NTP-disciplined, so a minute covers drift without letting a document
# "from the future" pass a freshness check long before it is issued.
MAX_CLOCK_SKEW = _dt.timedelta(seconds=60)
_ES384 = ec.ECDSA(hashes.SHA384())
_KINDS: frozenset[str] = frozenset(("nitro-enclave", "nitrotpm"))
_P384_SCALAR_SIZE = 48


@functools.cache
def _aws_root() -> x509.Certificate:
    """The pinned AWS root, loaded and checked against its digest once per process."""
    return aws_nitro_root()


def der_signature(raw: bytes) -> bytes:
    """COSE's `r || s` (48 bytes each, RFC 9053 §2.1) as the DER ECDSA-Sig-Value OpenSSL takes.

    `encode_dss_signature` with `r` and `s` as ints gives the same bytes; this skips the int
    round trip (half the time, on every verification): each INTEGER is its big-endian bytes
    without leading zeros, with one zero byte put back when the top bit is set, and 0 as `00`.
    """
    r = raw[:_P384_SCALAR_SIZE].lstrip(b"\0")
    s = raw[_P384_SCALAR_SIZE:].lstrip(b"\0")
    if not r or r[0] & 0x80:
        r = b"\0" + r
    if not s or s[0] & 0x80:
        s = b"\0" + s
    # At most 2 x (2 + 49) = 102 content bytes: every length fits the short form.
    return b"\x30%c\x02%c%b\x02%c%b" % (len(r) + len(s) + 4, len(r), r, len(s), s)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class Verifier:
    """Verifies Nitro Enclave attestation documents against fixed trust roots.

    Holds a cache of validated certificate paths (per instance; a new `Verifier` starts cold).
    Thread safety: the cache is a plain `OrderedDict`; use one verifier per thread, or a lock.
    """

    def __init__(
        self,
        *,
        roots: Sequence[x509.Certificate],
        clock: Callable[[], _dt.datetime] = _utcnow,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._chain = ChainValidator(roots, cache_size=cache_size)
        self._clock = clock

    @classmethod
    def aws(
        cls,
        *,
        clock: Callable[[], _dt.datetime] = _utcnow,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> Verifier:
        """A verifier pinned to AWS_NitroEnclaves_Root-G1 (DER SHA-256 `641a0321…bb5b`)."""
        return cls(roots=[_aws_root()], clock=clock, cache_size=cache_size)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._chain.roots

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of this verifier's chain cache."""
        return self._chain.cache_info()

    def verify(
        self,
        data: bytes,
        *,
        policy: VerificationPolicy,
        at: _dt.datetime | None = None,
        kind: DocumentKind = "nitro-enclave",
    ) -> VerifiedDocument:
        """Verify `data` at time `at` (default: the verifier's clock) under `policy`.

        `kind` is the document kind accepted: `"nitro-enclave"` (default) or `"nitrotpm"`, whose
        policy must check its registers (`NitroTpmPolicy`, `NitroTpmPcrSet`).
        """
        # 0. Establish the verification time and refuse unusable policies before any work.
        if at is None:
            at = self._clock()
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at must be a timezone-aware datetime")
        if not callable(getattr(policy, "verify", None)):
            raise TypeError("a policy is required (see attestation.policy)")
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'nitro-enclave' or 'nitrotpm', got {kind!r}")
        if kind == "nitrotpm":
            if not checks_nitrotpm_pcrs(policy):
                raise InsecurePolicy(
                    f"{policy!r} checks no NitroTPM register; use NitroTpmPolicy(pcrs=...), "
                    "NitroTpmPcrSet or UnsafeNoPcrCheck()"
                )
        elif not checks_pcrs(policy):
            raise InsecurePolicy(
                f"{policy!r} checks no PCR; use PcrSet/Policy(pcrs=...) or UnsafeNoPcrCheck()"
            )

        # 1. Parse the COSE_Sign1 envelope and payload, trusting nothing (AWS
        #    attestation_process.md §3.2.1-§3.2.2: syntactic validation; see document.py).
        doc = AttestationDocument.parse(data)

        # 2. Only the kind asked for: a NitroTPM document's registers measure an instance's
        #    boot, an enclave's PCRs an enclave image; neither may stand for the other.
        if doc.kind != kind:
            if kind == "nitrotpm":
                raise NotNitroTpmDocument(
                    f"{doc.module_id} is a Nitro Enclave document (pcrs), not a NitroTPM one"
                )
            raise UnsupportedDocumentKind(
                f"{doc.module_id} is a NitroTPM document (nitrotpm_pcrs), not a Nitro Enclave "
                "one; verify it with kind='nitrotpm' and a NitroTpmPolicy"
            )

        # 3. Certificate chain: leaf + cabundle[1:] to a pinned root, every certificate valid at
        #    `at`, CA constraints (AWS §3.2.3; see _chain.py). cabundle[0] is never the anchor.
        chain = self._chain.validate(doc.certificate, doc.cabundle[1:], at)

        # 4. COSE signature (AWS §3.2.4; RFC 9052 §4.4): ES384 by the leaf key over Sig_structure
        #    built from the protected header and payload bytes as received. High-S is accepted:
        #    the NSM emits it (36 of the 66 real documents) and ECDSA verification allows it.
        try:
            chain.leaf_key.verify(der_signature(doc.signature), doc.sig_structure(), _ES384)
        except InvalidSignature as exc:
            raise SignatureError("the COSE ES384 signature does not verify") from exc

        # 5. Timestamp sanity: a document cannot be issued after the time we verify it at.
        timestamp = doc.timestamp
        if timestamp - at > MAX_CLOCK_SKEW:
            raise FutureDocument(
                f"document timestamp {timestamp.isoformat()} is after the verification time "
                f"{at.isoformat()} (+{MAX_CLOCK_SKEW})"
            )

        # 6. Debug mode (AWS User Guide: all-zero PCRs "cannot be used for cryptographic
        #    attestation"): refused unless the policy says otherwise, loudly. Enclaves only.
        if doc.kind == "nitro-enclave" and doc.is_debug:
            if not allows_debug(policy):
                raise DebugDocument(f"{doc.module_id} is a debug-mode enclave (PCR0 all zero)")
            _log.warning(
                "accepting debug-mode attestation document from %s: its PCRs attest nothing",
                doc.module_id,
            )

        # 7. The caller's policy, on the authenticated values.
        verified = VerifiedDocument(
            module_id=doc.module_id,
            timestamp=timestamp,
            digest=doc.digest,
            pcrs=doc.pcrs,
            public_key=doc.public_key,
            user_data=doc.user_data,
            nonce=doc.nonce,
            certificates=chain.certificates,
            raw=doc.raw,
            verified_at=at,
            kind=doc.kind,
        )
        policy.verify(verified, at)
        return verified


_per_thread = threading.local()


def verify(
    data: bytes,
    *,
    pcrs: Mapping[int, PcrValue] | Sequence[Mapping[int, PcrValue]] | UnsafeNoPcrCheck,
    nonce: bytes | str | None = None,
    max_age: _dt.timedelta | None = _dt.timedelta(minutes=5),
    at: _dt.datetime | None = None,
    allow_debug: bool = False,
    user_data: bytes | str | None = None,
    public_key: bytes | str | None = None,
    module_id: str | Iterable[str] | None = None,
) -> VerifiedDocument:
    """Verify `data` against the pinned AWS root under `Policy(pcrs=..., nonce=..., ...)`.

    The keywords are `Policy`'s; `at` defaults to now. The verifier underneath is
    `Verifier.aws()`, made once per thread and kept, so repeated calls reuse its chain cache.
    For other roots, several policies or a clock of your own, use `Verifier` directly.
    """
    policy = Policy(
        pcrs=pcrs,
        nonce=nonce,
        max_age=max_age,
        allow_debug=allow_debug,
        user_data=user_data,
        public_key=public_key,
        module_id=module_id,
    )
    verifier: Verifier | None = getattr(_per_thread, "verifier", None)
    if verifier is None:
        verifier = _per_thread.verifier = Verifier.aws()
    return verifier.verify(data, policy=policy, at=at)
