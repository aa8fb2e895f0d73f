"""`policy/`: what the caller expects (PCRs, debug, nonce, user_data, public_key, freshness)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from vectors.cases import case
from vectors.cases._world import (
    AT,
    DEFAULT_POLICY,
    MAX_AGE,
    TIMESTAMP,
    World,
    debug_pcrs,
    filler,
    ms,
    policy_for,
    production_pcrs,
    sha384,
)
from vectors.corpus import PolicySpec

_DEBUG_POLICY = policy_for(debug_pcrs())
_DEFAULT_PCRS = DEFAULT_POLICY.pcr_sets[0]
_NONCE = filler("nonce", 32)
_USER_DATA = filler("user_data", 48)
_PUBLIC_KEY = filler("public_key", 65)


@case(
    "policy.pcr-mismatch",
    policy=replace(DEFAULT_POLICY, pcrs={**_DEFAULT_PCRS, 1: sha384("other-pcr1")}),
)
def pcr_mismatch(w: World) -> bytes:
    """The policy expects a different PCR1."""
    return w.base.encode()


@case(
    "policy.pcr-mismatch",
    policy=replace(DEFAULT_POLICY, pcrs={**_DEFAULT_PCRS, 16: sha384("pcr16")}),
)
def pcr_absent(w: World) -> bytes:
    """The policy expects PCR16, which the document does not carry."""
    return w.base.encode()


@case("policy.pcr-mismatch", policy=PolicySpec(pcrs={0: production_pcrs()[0], 8: sha384("pcr8")}))
def pcr8_zero_expected_signed(w: World) -> bytes:
    """The policy expects a signing-certificate PCR8, the image is unsigned (PCR8 zero)."""
    return w.base.encode()


@case("policy.debug", policy=_DEBUG_POLICY)
def debug_refused(w: World) -> bytes:
    """A debug-mode document (all PCRs zero), and a policy that expects exactly those zero
    PCRs but does not allow debug."""
    return replace(w.base, pcrs=debug_pcrs()).encode()


@case(None, policy=replace(_DEBUG_POLICY, allow_debug=True))
def debug_allowed(w: World) -> bytes:
    """The same debug-mode document under allow_debug=true: valid."""
    return replace(w.base, pcrs=debug_pcrs()).encode()


#: Two PCR sets, production's then debug's (all zero): the debug document matches the second.
_TWO_SETS = (_DEFAULT_PCRS, _DEBUG_POLICY.pcr_sets[0])


@case(None, policy=PolicySpec(pcrs=_TWO_SETS, allow_debug=True))
def debug_pcr_sets_allowed(w: World) -> bytes:
    """A debug-mode document (all PCRs zero) and a policy of two PCR sets, a production one and
    the zero one, with allow_debug=true: the second set matches, valid."""
    return replace(w.base, pcrs=debug_pcrs()).encode()


@case("policy.debug", policy=PolicySpec(pcrs=_TWO_SETS))
def debug_pcr_sets_refused(w: World) -> bytes:
    """The same debug-mode document and the same two PCR sets without allow_debug: refused as
    debug, although the second set matches."""
    return replace(w.base, pcrs=debug_pcrs()).encode()


@case(None, policy=replace(DEFAULT_POLICY, nonce=_NONCE))
def nonce_match(w: World) -> bytes:
    """The document's nonce equals the policy's."""
    return replace(w.base, nonce=_NONCE).encode()


@case("policy.nonce-mismatch", policy=replace(DEFAULT_POLICY, nonce=_NONCE[:31] + b"\x00"))
def nonce_mismatch(w: World) -> bytes:
    """The document's nonce differs from the policy's in its last byte."""
    return replace(w.base, nonce=_NONCE).encode()


@case("policy.nonce-mismatch", policy=replace(DEFAULT_POLICY, nonce=_NONCE))
def nonce_absent(w: World) -> bytes:
    """The policy expects a nonce; the document's is null."""
    return w.base.encode()


@case("policy.nonce-mismatch", policy=replace(DEFAULT_POLICY, nonce=b""))
def nonce_empty_vs_absent(w: World) -> bytes:
    """The policy expects an empty nonce; the document's is null (empty is not absent)."""
    return w.base.encode()


def _bound(w: World) -> bytes:
    return replace(w.base, user_data=_USER_DATA, public_key=_PUBLIC_KEY).encode()


@case(
    "policy.user-data-mismatch",
    policy=replace(DEFAULT_POLICY, user_data=filler("other-user_data", 48)),
)
def user_data_mismatch(w: World) -> bytes:
    """The document's user_data differs from the expected value."""
    return _bound(w)


@case("policy.user-data-mismatch", policy=replace(DEFAULT_POLICY, user_data=_USER_DATA))
def user_data_absent(w: World) -> bytes:
    """The policy expects user_data; the document's is null."""
    return w.base.encode()


@case(
    "policy.public-key-mismatch",
    policy=replace(DEFAULT_POLICY, public_key=filler("other-public_key", 65)),
)
def public_key_mismatch(w: World) -> bytes:
    """The document's public_key differs from the expected value."""
    return _bound(w)


@case("policy.stale")
def stale(w: World) -> bytes:
    """The document is max_age + 1 ms old at the verification time."""
    return replace(w.base, timestamp_ms=ms(AT - MAX_AGE) - 1).encode()


@case(None)
def age_equals_max_age(w: World) -> bytes:
    """The document is exactly max_age old: the bound is inclusive."""
    return replace(w.base, timestamp_ms=ms(AT - MAX_AGE)).encode()


@case(
    None,
    at=TIMESTAMP + timedelta(hours=2, minutes=30),
    policy=replace(DEFAULT_POLICY, max_age=None),
)
def old_without_max_age(w: World) -> bytes:
    """A document verified 2 h 30 min after it was signed (inside every certificate's window)
    with max_age null: freshness is not checked, the document is valid."""
    return w.base.encode()


def _future(w: World) -> bytes:
    return replace(w.base, timestamp_ms=ms(AT + timedelta(hours=1))).encode()


@case("policy.future")
def future(w: World) -> bytes:
    """The document's timestamp is one hour after the verification time, far beyond any clock
    skew; every certificate is valid at both instants."""
    return _future(w)


@case("policy.future", policy=replace(DEFAULT_POLICY, max_age=None))
def future_without_max_age(w: World) -> bytes:
    """The same future document with max_age null: a future timestamp is refused whatever the
    freshness bound."""
    return _future(w)
