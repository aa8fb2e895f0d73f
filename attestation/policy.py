"""Verification policies: what an authentic document must also say to be accepted.

A policy is any object with `verify(doc, at) -> None` that raises a `PolicyError` subclass
(sigstore-python's `VerificationPolicy` shape). The verifier runs it after the chain and the
signature have been checked, on the `VerifiedDocument` it is about to return.

Two rules are enforced by the verifier, not by each policy, so that they cannot be forgotten:

- **PCRs must be checked.** A policy must declare `checks_pcrs = True`; every built-in policy
  that compares PCRs does, combinators derive it (`AllOf`: any child, `AnyOf`: every child), and
  a policy that checks none is refused with `InsecurePolicy` (`policy.no-pcr-check`) when it is
  built (`Policy`, `AllOf`, `AnyOf`) or passed to `verify`. The only way around it is to say so:
  `UnsafeNoPcrCheck()`, which logs a warning every time it runs.
- **Debug documents are refused** (PCR0 all zero: the enclave runs in debug mode and its PCRs mean
  nothing; AWS User Guide) unless the policy declares `allows_debug = True`: `AllowDebug()` or
  `Policy(allow_debug=True)`; the verifier logs a warning each time that lets a document through.

`Policy(...)` is the convenience entry for the common case; it builds an `AllOf` of the small
policies below and is itself a policy.

NitroTPM (EC2 instance) documents have their own registers, `nitrotpm_pcrs`, which say nothing
about an enclave: `NitroTpmPcrSet` / `NitroTpmPolicy(...)` check them and declare
`checks_nitrotpm_pcrs = True`, which `Verifier.verify(..., kind="nitrotpm")` requires (combinators
derive it like `checks_pcrs`). `PcrSet` refuses a NitroTPM document and `NitroTpmPcrSet` an
enclave one, so neither kind's expected values can be matched against the other's registers.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from attestation.document import VerifiedDocument
from attestation.errors import (
    DebugDocument,
    InsecurePolicy,
    ModuleIdMismatch,
    NonceMismatch,
    NoPolicyMatched,
    PcrMismatch,
    PolicyError,
    PublicKeyMismatch,
    StaleDocument,
    UserDataMismatch,
)

__all__ = [
    "AllOf",
    "AllowDebug",
    "AnyOf",
    "MaxAge",
    "ModuleId",
    "NitroTpmPcrSet",
    "NitroTpmPolicy",
    "Nonce",
    "PcrSet",
    "Policy",
    "PublicKey",
    "UnsafeNoPcrCheck",
    "UserData",
    "VerificationPolicy",
    "allows_debug",
    "checks_nitrotpm_pcrs",
    "checks_pcrs",
]

_log = logging.getLogger("attestation.policy")

# AWS CDDL: `index = 0..31`, `pcr = bytes .size (32/48/64)`.
_MAX_PCR_INDEX = 31
_PCR_SIZES = frozenset({32, 48, 64})
# A NitroTPM document's registers: a TPM's PCR0..PCR23 (attestation.document.NITROTPM_PCRS).
_MAX_NITROTPM_INDEX = 23

PcrValue = bytes | str
"""An expected PCR: raw bytes or hex text (case-insensitive, no prefix)."""


@runtime_checkable
class VerificationPolicy(Protocol):
    """One method: accept `doc` (authentic, verified at `at`) or raise a `PolicyError`.

    Optional attributes read by the verifier: `checks_pcrs` (must be true, see module docs) and
    `allows_debug` (default false).
    """

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None: ...


def checks_pcrs(policy: object) -> bool:
    """Whether `policy` declares that it constrains PCRs (or is the explicit unsafe opt-out)."""
    return getattr(policy, "checks_pcrs", False) is True


def checks_nitrotpm_pcrs(policy: object) -> bool:
    """Whether `policy` constrains a NitroTPM document's registers (or is the unsafe opt-out)."""
    return getattr(policy, "checks_nitrotpm_pcrs", False) is True


def allows_debug(policy: object) -> bool:
    """Whether `policy` declares that debug-mode documents may pass."""
    return getattr(policy, "allows_debug", False) is True


def _to_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            raise ValueError(f"{what}: not hex: {value!r}") from exc
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what}: expected bytes or hex str, got {type(value).__name__}")


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


@dataclass(frozen=True, slots=True, init=False)
class PcrSet:
    """Every listed PCR must be present and equal; unlisted PCRs are not looked at."""

    pcrs: Mapping[int, bytes]
    checks_pcrs: ClassVar[bool] = True

    def __init__(self, pcrs: Mapping[int, PcrValue]) -> None:
        object.__setattr__(self, "pcrs", _registers(pcrs, "PcrSet", _MAX_PCR_INDEX))

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        if doc.kind != "nitro-enclave":
            raise PcrMismatch(
                "a NitroTPM document's registers are not enclave PCRs (use NitroTpmPcrSet)"
            )
        _compare(self.pcrs, doc.pcrs, "PCR")


@dataclass(frozen=True, slots=True, init=False)
class NitroTpmPcrSet:
    """A NitroTPM document's registers (`nitrotpm_pcrs`, 0..23): each listed one present and equal.

    Refuses an enclave document: its PCRs measure an enclave image, not an instance's boot.
    """

    pcrs: Mapping[int, bytes]
    checks_pcrs: ClassVar[bool] = True
    checks_nitrotpm_pcrs: ClassVar[bool] = True

    def __init__(self, pcrs: Mapping[int, PcrValue]) -> None:
        object.__setattr__(self, "pcrs", _registers(pcrs, "NitroTpmPcrSet", _MAX_NITROTPM_INDEX))

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        if doc.kind != "nitrotpm":
            raise PcrMismatch("not a NitroTPM document: it has no nitrotpm_pcrs")
        _compare(self.pcrs, doc.pcrs, "nitrotpm PCR")


def _registers(pcrs: Mapping[int, PcrValue], what: str, max_index: int) -> dict[int, bytes]:
    """`pcrs` as `{index: bytes}` in index order, each index 0..max_index and a PCR size."""
    if not pcrs:
        raise InsecurePolicy(f"{what} needs at least one PCR")
    normalised: dict[int, bytes] = {}
    for index, value in pcrs.items():
        if type(index) is not int or not 0 <= index <= max_index:
            raise ValueError(f"PCR index must be an int in 0..{max_index}, got {index!r}")
        raw = _to_bytes(value, f"PCR{index}")
        if len(raw) not in _PCR_SIZES:
            raise ValueError(f"PCR{index} must be 32, 48 or 64 bytes, got {len(raw)}")
        normalised[index] = raw
    return dict(sorted(normalised.items()))


def _compare(expected: Mapping[int, bytes], actual: Mapping[int, bytes], name: str) -> None:
    for index, value in expected.items():
        found = actual.get(index)
        if found is None:
            raise PcrMismatch(f"{name}{index} is not in the document")
        if not _same(found, value):
            raise PcrMismatch(f"{name}{index} is {found.hex()}, expected {value.hex()}")


@dataclass(frozen=True, slots=True, init=False)
class _BytesMatcher:
    """Equal to `expected`, or accepted by `predicate`; `None` in the document never matches."""

    expected: bytes | None
    predicate: Callable[[bytes], bool] | None

    _field: ClassVar[str] = ""
    _error: ClassVar[type[PolicyError]] = PolicyError

    def __init__(
        self,
        expected: bytes | str | None = None,
        *,
        predicate: Callable[[bytes], bool] | None = None,
    ) -> None:
        if (expected is None) == (predicate is None):
            raise ValueError("give exactly one of expected or predicate")
        object.__setattr__(
            self, "expected", None if expected is None else _to_bytes(expected, self._field)
        )
        object.__setattr__(self, "predicate", predicate)

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        actual: bytes | None = getattr(doc, self._field)
        if actual is None:
            raise self._error(f"the document has no {self._field}")
        if self.expected is not None:
            if not _same(actual, self.expected):
                raise self._error(f"{self._field} differs from the expected value")
        elif self.predicate is not None and self.predicate(actual) is not True:
            raise self._error(f"{self._field} is not accepted by the predicate")


class Nonce(_BytesMatcher):
    """The document's nonce equals the one the verifier sent (replay protection)."""

    __slots__ = ()
    _field: ClassVar[str] = "nonce"
    _error: ClassVar[type[PolicyError]] = NonceMismatch


class UserData(_BytesMatcher):
    """The document's user_data equals `expected` or satisfies `predicate`."""

    __slots__ = ()
    _field: ClassVar[str] = "user_data"
    _error: ClassVar[type[PolicyError]] = UserDataMismatch


class PublicKey(_BytesMatcher):
    """The document's public_key equals `expected` or satisfies `predicate`."""

    __slots__ = ()
    _field: ClassVar[str] = "public_key"
    _error: ClassVar[type[PolicyError]] = PublicKeyMismatch


@dataclass(frozen=True, slots=True)
class ModuleId:
    """The document's module_id is one of `allowed` (e.g. one enclave of a known instance)."""

    allowed: frozenset[str]

    def __init__(self, *allowed: str) -> None:
        if not allowed:
            raise ValueError("ModuleId needs at least one module id")
        object.__setattr__(self, "allowed", frozenset(allowed))

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        if doc.module_id not in self.allowed:
            raise ModuleIdMismatch(f"module_id {doc.module_id!r} is not allowed")


@dataclass(frozen=True, slots=True)
class MaxAge:
    """The document's timestamp is at most `max_age` before the verification time.

    Chain validity alone is not freshness: a leaf lives ~3 h, and a replayed document stays
    chain-valid all that time (aptos-labs/aptos-core PR #20103 review).
    """

    max_age: _dt.timedelta

    def __post_init__(self) -> None:
        if self.max_age < _dt.timedelta(0):
            raise ValueError("max_age must not be negative")

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        age = at - doc.timestamp
        if age > self.max_age:
            raise StaleDocument(f"document is {age} old, more than {self.max_age}")


class AllowDebug:
    """Let debug-mode documents (PCR0 all zero) through. Only for development enclaves.

    Debug enclaves can be inspected and modified through their console; their documents attest
    nothing about the code (AWS User Guide: they "cannot be used for cryptographic attestation").
    """

    __slots__ = ()
    allows_debug = True

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        return None

    def __repr__(self) -> str:
        return "AllowDebug()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllowDebug)

    def __hash__(self) -> int:
        return hash(AllowDebug)


class UnsafeNoPcrCheck:
    """**Accepts any PCR values.** This policy is fundamentally insecure for attestation.

    It exists so that "I do not check the code identity" has to be written down. It logs a
    warning every time it runs.
    """

    __slots__ = ()
    checks_pcrs = True
    checks_nitrotpm_pcrs = True

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        _log.warning(
            "UnsafeNoPcrCheck: accepting %s without checking any PCR: this attests nothing "
            "about the enclave's code",
            doc.module_id,
        )

    def __repr__(self) -> str:
        return "UnsafeNoPcrCheck()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnsafeNoPcrCheck)

    def __hash__(self) -> int:
        return hash(UnsafeNoPcrCheck)


@dataclass(frozen=True, slots=True, init=False)
class AllOf:
    """Every child policy must accept. Checks PCRs if any child does."""

    children: tuple[VerificationPolicy, ...]
    checks_pcrs: bool
    checks_nitrotpm_pcrs: bool
    allows_debug: bool

    def __init__(self, *children: VerificationPolicy) -> None:
        if not children:
            # An empty AllOf would accept everything (sigstore: "a potential source of API misuse").
            raise InsecurePolicy("AllOf needs at least one policy")
        _check_children(children)
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "checks_pcrs", any(checks_pcrs(c) for c in children))
        object.__setattr__(
            self, "checks_nitrotpm_pcrs", any(checks_nitrotpm_pcrs(c) for c in children)
        )
        object.__setattr__(self, "allows_debug", any(allows_debug(c) for c in children))
        if not self.checks_pcrs:
            raise InsecurePolicy("AllOf checks no PCR; add a PcrSet or UnsafeNoPcrCheck()")

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        for child in self.children:
            child.verify(doc, at)


@dataclass(frozen=True, slots=True, init=False)
class AnyOf:
    """At least one child must accept; each must check PCRs, or one branch could skip them.

    A debug-mode document can only be accepted by an alternative that itself allows debug:
    otherwise `AnyOf(AllOf(dev_pcrs, AllowDebug()), prod_pcrs)` would let a debug document
    through the production branch. This holds even under an outer `AllOf(..., AllowDebug())`
    (fail closed: put `AllowDebug()` in the alternative that should accept debug documents).
    """

    children: tuple[VerificationPolicy, ...]
    checks_pcrs: bool
    checks_nitrotpm_pcrs: bool
    allows_debug: bool

    def __init__(self, *children: VerificationPolicy) -> None:
        if not children:
            raise InsecurePolicy("AnyOf needs at least one policy")
        _check_children(children)
        if not all(checks_pcrs(c) for c in children):
            raise InsecurePolicy("every AnyOf alternative must check PCRs")
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "checks_pcrs", True)
        object.__setattr__(
            self, "checks_nitrotpm_pcrs", all(checks_nitrotpm_pcrs(c) for c in children)
        )
        object.__setattr__(self, "allows_debug", any(allows_debug(c) for c in children))

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        errors: list[PolicyError] = []
        for child in self.children:
            if doc.is_debug and not allows_debug(child):
                errors.append(DebugDocument(f"{child!r} does not allow debug-mode documents"))
                continue
            try:
                child.verify(doc, at)
            except PolicyError as exc:
                errors.append(exc)
            else:
                return
        codes = {e.code for e in errors}
        # One shared reason (e.g. every allowed PCR set differs) keeps its own code.
        code = codes.pop() if len(codes) == 1 else None
        reasons = "; ".join(e.reason for e in errors)
        raise NoPolicyMatched(f"no alternative matched: {reasons}", errors=tuple(errors), code=code)


def _check_children(children: Iterable[object]) -> None:
    for child in children:
        if not callable(getattr(child, "verify", None)):
            raise TypeError(f"{child!r} is not a policy (no verify method)")


@dataclass(frozen=True, slots=True, init=False)
class Policy:
    """The common policy in one call.

    - `pcrs`: one mapping `{index: hex or bytes}`, or a sequence of them (any one set may match).
      Required and non-empty; to skip PCRs pass `UnsafeNoPcrCheck()` explicitly.
    - `nonce`: the nonce you sent, or `None` not to check it.
    - `max_age`: freshness bound on the document's timestamp (default 5 minutes); `None` disables
      it, e.g. to re-verify an archived document at its own time.
    - `allow_debug`: accept debug-mode documents (logs a warning each time one passes).
    - `user_data`, `public_key`: expected exact values; `module_id`: allowed module ids.
    """

    policy: AllOf
    checks_pcrs: bool
    allows_debug: bool

    def __init__(
        self,
        *,
        pcrs: Mapping[int, PcrValue] | Sequence[Mapping[int, PcrValue]] | UnsafeNoPcrCheck,
        nonce: bytes | str | None = None,
        max_age: _dt.timedelta | None = _dt.timedelta(minutes=5),
        allow_debug: bool = False,
        user_data: bytes | str | None = None,
        public_key: bytes | str | None = None,
        module_id: str | Iterable[str] | None = None,
    ) -> None:
        parts = [
            _pcr_part(pcrs, PcrSet, allow_debug=allow_debug),
            *_common_parts(nonce, max_age, user_data, public_key, module_id),
        ]
        if allow_debug:
            parts.append(AllowDebug())
        combined = AllOf(*parts)
        object.__setattr__(self, "policy", combined)
        object.__setattr__(self, "checks_pcrs", combined.checks_pcrs)
        object.__setattr__(self, "allows_debug", combined.allows_debug)

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        self.policy.verify(doc, at)


def _pcr_part(
    pcrs: Mapping[int, PcrValue] | Sequence[Mapping[int, PcrValue]] | UnsafeNoPcrCheck,
    kind: type[PcrSet] | type[NitroTpmPcrSet],
    *,
    allow_debug: bool = False,
) -> VerificationPolicy:
    """One PCR set, any of several, or the explicit opt-out (`Policy`'s `pcrs` argument)."""
    if isinstance(pcrs, UnsafeNoPcrCheck):
        return pcrs
    if isinstance(pcrs, Mapping):
        return kind(pcrs)
    sets = [kind(p) for p in pcrs]
    if not sets:
        raise InsecurePolicy("pcrs: at least one PCR set is required")
    if len(sets) == 1:
        return sets[0]
    if allow_debug:
        # `AnyOf` lets a debug document through only an alternative that allows debug itself
        # (see `AnyOf`): here every alternative does, as the caller asked.
        return AnyOf(*(AllOf(s, AllowDebug()) for s in sets))
    return AnyOf(*sets)


def _common_parts(
    nonce: bytes | str | None,
    max_age: _dt.timedelta | None,
    user_data: bytes | str | None,
    public_key: bytes | str | None,
    module_id: str | Iterable[str] | None,
) -> list[VerificationPolicy]:
    """The rules both kinds of document share (see `Policy`)."""
    parts: list[VerificationPolicy] = []
    if nonce is not None:
        parts.append(Nonce(nonce))
    if max_age is not None:
        parts.append(MaxAge(max_age))
    if user_data is not None:
        parts.append(UserData(user_data))
    if public_key is not None:
        parts.append(PublicKey(public_key))
    if module_id is not None:
        parts.append(ModuleId(module_id) if isinstance(module_id, str) else ModuleId(*module_id))
    return parts


@dataclass(frozen=True, slots=True, init=False)
class NitroTpmPolicy:
    """`Policy` for NitroTPM (EC2 instance) documents, verified with `kind="nitrotpm"`.

    - `pcrs`: expected NitroTPM registers `{index 0..23: hex or bytes}` (e.g. PCR4/PCR12 for an
      attestable AMI, PCR7 for Secure Boot), a sequence of such sets, or `UnsafeNoPcrCheck()`;
    - `nonce`, `max_age` (default 5 minutes), `user_data`, `public_key`, `module_id`: as in
      `Policy`. There is no `allow_debug`: debug mode is an enclave's.
    """

    policy: AllOf
    checks_pcrs: bool
    checks_nitrotpm_pcrs: bool
    allows_debug: ClassVar[bool] = False

    def __init__(
        self,
        *,
        pcrs: Mapping[int, PcrValue] | Sequence[Mapping[int, PcrValue]] | UnsafeNoPcrCheck,
        nonce: bytes | str | None = None,
        max_age: _dt.timedelta | None = _dt.timedelta(minutes=5),
        user_data: bytes | str | None = None,
        public_key: bytes | str | None = None,
        module_id: str | Iterable[str] | None = None,
    ) -> None:
        combined = AllOf(
            _pcr_part(pcrs, NitroTpmPcrSet),
            *_common_parts(nonce, max_age, user_data, public_key, module_id),
        )
        object.__setattr__(self, "policy", combined)
        object.__setattr__(self, "checks_pcrs", combined.checks_pcrs)
        object.__setattr__(self, "checks_nitrotpm_pcrs", combined.checks_nitrotpm_pcrs)

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        self.policy.verify(doc, at)
