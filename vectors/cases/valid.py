"""`valid/`: the baseline shapes a verifier must accept."""

from __future__ import annotations

from dataclasses import dataclass, replace

from attestation import _profiles, builder
from vectors.cases import case, variant
from vectors.cases._world import (
    DEFAULT_POLICY,
    LEAF_START,
    MODULE_ID,
    Doc,
    World,
    big_leaf,
    canonical_order,
    der,
    filler,
    sha384,
)
from vectors.corpus import PolicySpec


@dataclass(frozen=True)
class _Optionals:
    """Values for the three optional fields, applied alike to a document and its policy."""

    public_key: bytes
    user_data: bytes
    nonce: bytes

    def doc(self, w: World) -> Doc:
        return replace(
            w.base, public_key=self.public_key, user_data=self.user_data, nonce=self.nonce
        )

    def policy(self) -> PolicySpec:
        return replace(
            DEFAULT_POLICY, public_key=self.public_key, user_data=self.user_data, nonce=self.nonce
        )


_FULL = _Optionals(filler("public_key", 91), filler("user_data", 64), filler("nonce", 32))
_BIGGEST = _Optionals(*(filler(key, 1024) for key in ("public_key", "user_data", "nonce")))
_ALL_PCRS = {index: sha384(f"pcr-32/{index}") for index in range(32)}
_ONE_PCR = {0: sha384("pcr-single/0")}
_MIXED_PCRS = {
    0: sha384("pcr-mixed/0"),
    1: filler("pcr-mixed/1", 32),
    2: filler("pcr-mixed/2", 64),
}
_SPARSE_PCRS = {0: sha384("pcr-sparse/0"), 8: sha384("pcr-sparse/8"), 31: sha384("pcr-sparse/31")}


@case(None)
def definite_map(w: World) -> bytes:
    """The NSM's shape up to 2025: untagged, definite 9-entry payload map (0xa9) in AWS's key
    order, null public_key/user_data/nonce, 8-byte timestamp, 16 PCRs, 4-certificate cabundle
    root first."""
    return w.base.encode()


@case(None)
def indefinite_map(w: World) -> bytes:
    """The NSM's shape since mid-2025: the payload map is indefinite-length (0xbf ... 0xff)."""
    return replace(w.base, indefinite=True).encode()


@case(None)
def tag18(w: World) -> bytes:
    """The envelope wrapped in tag 18 (COSE_Sign1), as AWS's documentation shows it."""
    return w.base.encode(tag18=True)


@case(None)
def tag18_indefinite_map(w: World) -> bytes:
    """Tag 18 and an indefinite-length payload map together."""
    return replace(w.base, indefinite=True).encode(tag18=True)


@case(None, policy=_FULL.policy())
def all_optional_fields(w: World) -> bytes:
    """public_key, user_data and nonce all present; the policy checks all three."""
    return _FULL.doc(w).encode()


@case(None)
def empty_optional_fields(w: World) -> bytes:
    """public_key, user_data and nonce are empty byte strings (not null). AWS's CDDL allows
    0..1024 bytes; an empty public_key occurs in a real 2021 document."""
    return replace(w.base, public_key=b"", user_data=b"", nonce=b"").encode()


@case(None)
def empty_public_key(w: World) -> bytes:
    """Only public_key is an empty byte string, like the real 2021 hf/nitrite document;
    attestation_process.md §3.2.2.2's [1, 1024] rule would wrongly reject it."""
    return replace(w.base, public_key=b"").encode()


@case(None, policy=_BIGGEST.policy())
def max_size_fields(w: World) -> bytes:
    """public_key, user_data and nonce each exactly 1024 bytes (the CDDL maximum; AWS's own
    device test sends 1024), checked by the policy."""
    return _BIGGEST.doc(w).encode()


@case(None)
def optional_fields_absent(w: World) -> bytes:
    """The three optional keys are left out instead of null (the CDDL marks them optional)."""
    optional = builder.PAYLOAD_KEYS[6:]
    return w.base.encode(entries=[e for e in w.base.fields() if e[0] not in optional])


@case(None)
def key_order_canonical(w: World) -> bytes:
    """Payload keys in RFC 8949 length-first (canonical) order instead of AWS's: key order
    carries no meaning."""
    return w.base.encode(entries=canonical_order(w.base.fields()))


@case(None)
def key_order_reversed(w: World) -> bytes:
    """Payload keys in reverse of AWS's order."""
    return w.base.encode(entries=list(reversed(w.base.fields())))


@case(None, policy=PolicySpec(pcrs={i: _ALL_PCRS[i] for i in (0, 17, 31)}))
def pcrs_32(w: World) -> bytes:
    """All 32 PCRs present (0-15 boot-locked, 16-31 locked by the application)."""
    return replace(w.base, pcrs=_ALL_PCRS).encode()


@case(None, policy=PolicySpec(pcrs=_ONE_PCR))
def pcrs_single(w: World) -> bytes:
    """A single PCR (the CDDL requires at least one)."""
    return replace(w.base, pcrs=_ONE_PCR).encode()


@case(None, policy=PolicySpec(pcrs=_MIXED_PCRS))
def pcr_sizes_32_48_64(w: World) -> bytes:
    """PCR values of 48, 32 and 64 bytes (the CDDL allows 32/48/64)."""
    return replace(w.base, pcrs=_MIXED_PCRS).encode()


@case(None, policy=PolicySpec(pcrs=_SPARSE_PCRS))
def pcrs_sparse(w: World) -> bytes:
    """PCRs 0, 8 and 31 only, checked by the policy."""
    return replace(w.base, pcrs=_SPARSE_PCRS).encode()


@case(None)
def certificate_1024_bytes(w: World) -> bytes:
    """The leaf certificate is exactly 1024 bytes (AWS's maximum), padded with a non-critical
    private extension."""
    return replace(w.base, leaf_der=der(big_leaf(w, 1024))).encode()


#: What each era of real NSM output looks like (attestation._profiles has the evidence).
_ERA_SHAPES = {
    "2021": "definite payload map, instance CA with BC and KU only, leaf valid 3 h from issue",
    "2022": "definite payload map, instance CA with BC and KU only, leaf valid from 3 s before "
    "issue to 3 h after",
    "2024": "definite payload map, instance CA with BC, KU, SKI and AKI, leaf 3:00:03",
    "2026": "indefinite payload map, instance CA with BC, KU, SKI and AKI, leaf 3:00:03",
}


_ERA_VARIANTS = [variant(f"profile-{era}", era=era, shape=s) for era, s in _ERA_SHAPES.items()]


@case(None, variants=_ERA_VARIANTS)
def production_profile(w: World, era: str, shape: str) -> bytes:
    """Real NSM output of the {era} era ({shape}): the intermediates reissued under the same root
    with that era's random serials (128-bit CA serials, a 160-bit instance CA serial) and extension
    order, the leaf's serial the enclave id, four zero bytes and its issue time."""
    profile = _profiles.profile(era)
    pki = _profiles.apply(w.pki, profile, root=w.pki.root)
    leaf = _profiles.issue_leaf(
        pki, profile, module_id=MODULE_ID, issued=LEAF_START + profile.leaf_backdate
    )
    return replace(
        w.base,
        leaf_der=leaf.der,
        cabundle=tuple(pki.cabundle),
        signer=leaf.key,
        indefinite=profile.indefinite_payload,
    ).encode()
