"""Policy objects: matching, composition, fail-closed construction, loud opt-outs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest

from attestation import (
    AllOf,
    AllowDebug,
    AnyOf,
    MaxAge,
    ModuleId,
    Nonce,
    PcrSet,
    Policy,
    PublicKey,
    UnsafeNoPcrCheck,
    UserData,
    VerifiedDocument,
)
from attestation.errors import InsecurePolicy, NoPolicyMatched, PolicyError
from attestation.policy import allows_debug, checks_pcrs

AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
P0, P1 = b"\x11" * 48, b"\x22" * 48


def _doc(**overrides: object) -> VerifiedDocument:
    fields: dict[str, object] = {
        "module_id": "i-0abc-enc01",
        "timestamp": AT - timedelta(seconds=30),
        "digest": "SHA384",
        "pcrs": MappingProxyType({0: P0, 1: P1, 2: bytes(48)}),
        "public_key": b"pk",
        "user_data": b"ud",
        "nonce": b"nonce",
        "certificates": (),
        "raw": b"",
        "verified_at": AT,
    }
    fields.update(overrides)
    return VerifiedDocument(**fields)  # type: ignore[arg-type]


def _code(policy: object, doc: VerifiedDocument | None = None) -> str:
    with pytest.raises(PolicyError) as info:
        policy.verify(doc or _doc(), AT)  # type: ignore[attr-defined]
    return info.value.code


class TestPcrSet:
    def test_match_hex_and_bytes(self) -> None:
        PcrSet({0: P0.hex(), 1: P1}).verify(_doc(), AT)
        PcrSet({0: P0.hex().upper()}).verify(_doc(), AT)

    def test_mismatch_and_missing(self) -> None:
        assert _code(PcrSet({0: P1})) == "policy.pcr-mismatch"
        assert _code(PcrSet({5: P1})) == "policy.pcr-mismatch"

    @pytest.mark.parametrize(
        "pcrs", [{32: P0}, {-1: P0}, {0: b"\x00" * 47}, {0: "zz"}, {"0": P0}, {True: P0}]
    )
    def test_bad_construction(self, pcrs: dict[object, object]) -> None:
        with pytest.raises(ValueError):
            PcrSet(pcrs)  # type: ignore[arg-type]

    def test_empty_refused(self) -> None:
        with pytest.raises(InsecurePolicy) as info:
            PcrSet({})
        assert info.value.code == "policy.no-pcr-check"


class TestMatchers:
    def test_nonce(self) -> None:
        Nonce(b"nonce").verify(_doc(), AT)
        Nonce(b"nonce".hex()).verify(_doc(), AT)
        assert _code(Nonce(b"other")) == "policy.nonce-mismatch"
        assert _code(Nonce(b"nonce"), _doc(nonce=None)) == "policy.nonce-mismatch"

    def test_user_data_and_public_key(self) -> None:
        UserData(b"ud").verify(_doc(), AT)
        UserData(predicate=lambda v: v.startswith(b"u")).verify(_doc(), AT)
        assert _code(UserData(predicate=lambda v: False)) == "policy.user-data-mismatch"
        assert _code(UserData(b"x")) == "policy.user-data-mismatch"
        PublicKey(b"pk").verify(_doc(), AT)
        assert _code(PublicKey(b"pk"), _doc(public_key=None)) == "policy.public-key-mismatch"
        with pytest.raises(ValueError):
            UserData()
        with pytest.raises(ValueError):
            UserData(b"x", predicate=bool)

    def test_empty_bytes_are_a_value(self) -> None:
        UserData(b"").verify(_doc(user_data=b""), AT)
        assert _code(UserData(b""), _doc(user_data=None)) == "policy.user-data-mismatch"

    def test_module_id(self) -> None:
        ModuleId("i-0abc-enc01", "other").verify(_doc(), AT)
        assert _code(ModuleId("other")) == "policy.module-id-mismatch"

    def test_max_age(self) -> None:
        MaxAge(timedelta(minutes=1)).verify(_doc(), AT)
        MaxAge(timedelta(seconds=30)).verify(_doc(), AT)  # inclusive
        assert _code(MaxAge(timedelta(seconds=29))) == "policy.stale"
        with pytest.raises(ValueError):
            MaxAge(timedelta(seconds=-1))


class TestComposition:
    def test_all_of(self) -> None:
        policy = AllOf(PcrSet({0: P0}), Nonce(b"nonce"))
        policy.verify(_doc(), AT)
        assert _code(policy, _doc(nonce=b"x")) == "policy.nonce-mismatch"

    def test_any_of(self) -> None:
        policy = AnyOf(PcrSet({0: P1}), PcrSet({0: P0}))
        policy.verify(_doc(), AT)
        # Every alternative failed for the same reason: that reason's code.
        with pytest.raises(NoPolicyMatched) as info:
            AnyOf(PcrSet({0: P1}), PcrSet({1: P0})).verify(_doc(), AT)
        assert info.value.code == "policy.pcr-mismatch"
        assert len(info.value.errors) == 2
        mixed = AnyOf(PcrSet({0: P1}), AllOf(PcrSet({0: P0}), Nonce(b"x")))
        assert _code(mixed) == "policy.none-matched"

    def test_debug_permission_does_not_leak_across_alternatives(self) -> None:
        # A debug document (PCR0 all zero) whose PCR1 matches the production branch only.
        debug = _doc(pcrs=MappingProxyType({0: bytes(48), 1: P1}))
        dev = AllOf(PcrSet({0: bytes(48), 1: P0}), AllowDebug())
        prod = PcrSet({1: P1})
        policy = AnyOf(dev, prod)
        assert allows_debug(policy)  # so the verifier lets it reach the alternatives...
        assert _code(policy, debug) == "policy.none-matched"  # ...which refuse it
        assert _code(AnyOf(prod, PcrSet({1: P0})), debug) == "policy.debug"
        # The same document is accepted by the branch that allows debug when that one matches.
        AnyOf(AllOf(PcrSet({1: P1}), AllowDebug()), PcrSet({1: P0})).verify(debug, AT)
        # Non-debug documents are unaffected.
        policy.verify(_doc(), AT)

    def test_empty_combinators_refused(self) -> None:
        with pytest.raises(InsecurePolicy):
            AllOf()
        with pytest.raises(InsecurePolicy):
            AnyOf()

    def test_no_pcr_check_refused_at_construction(self) -> None:
        with pytest.raises(InsecurePolicy):
            AllOf(Nonce(b"n"), MaxAge(timedelta(minutes=5)))
        with pytest.raises(InsecurePolicy):
            AnyOf(PcrSet({0: P0}), Nonce(b"n"))  # one branch would skip the PCRs
        with pytest.raises(InsecurePolicy):
            Policy(pcrs={})
        with pytest.raises(InsecurePolicy):
            Policy(pcrs=[])

    def test_not_a_policy(self) -> None:
        with pytest.raises(TypeError):
            AllOf(PcrSet({0: P0}), "nope")  # type: ignore[arg-type]

    def test_flags(self) -> None:
        assert checks_pcrs(PcrSet({0: P0}))
        assert not checks_pcrs(Nonce(b"n"))
        assert checks_pcrs(AllOf(PcrSet({0: P0}), Nonce(b"n")))
        assert not allows_debug(AllOf(PcrSet({0: P0})))
        assert allows_debug(AllOf(PcrSet({0: P0}), AllowDebug()))
        assert allows_debug(AnyOf(PcrSet({0: P1}), AllOf(PcrSet({0: P0}), AllowDebug())))


class TestUnsafe:
    def test_unsafe_no_pcr_check_warns_each_use(self, caplog: pytest.LogCaptureFixture) -> None:
        policy = AllOf(UnsafeNoPcrCheck(), Nonce(b"nonce"))
        assert checks_pcrs(policy)
        with caplog.at_level(logging.WARNING, logger="attestation.policy"):
            policy.verify(_doc(), AT)
            policy.verify(_doc(), AT)
        assert sum("UnsafeNoPcrCheck" in r.getMessage() for r in caplog.records) == 2


class TestPolicyConvenience:
    def test_defaults(self) -> None:
        policy = Policy(pcrs={0: P0.hex()})
        policy.verify(_doc(), AT)
        assert not policy.allows_debug
        assert _code(policy, _doc(timestamp=AT - timedelta(minutes=6))) == "policy.stale"

    def test_all_knobs(self) -> None:
        policy = Policy(
            pcrs=[{0: P1}, {0: P0, 1: P1}],
            nonce=b"nonce",
            max_age=None,
            allow_debug=True,
            user_data=b"ud",
            public_key="706b",
            module_id=["i-0abc-enc01"],
        )
        assert policy.allows_debug
        policy.verify(_doc(timestamp=AT - timedelta(days=3)), AT)
        assert _code(policy, _doc(nonce=b"x")) == "policy.nonce-mismatch"
        assert _code(policy, _doc(pcrs={0: P0, 1: P0})) == "policy.pcr-mismatch"

    def test_several_pcr_sets_mismatch_code(self) -> None:
        policy = Policy(pcrs=[{0: P1}, {1: P0}])
        assert _code(policy) == "policy.pcr-mismatch"

    def test_unsafe_pcrs(self) -> None:
        Policy(pcrs=UnsafeNoPcrCheck()).verify(_doc(), AT)

    def test_frozen(self) -> None:
        policy = Policy(pcrs={0: P0})
        with pytest.raises(AttributeError):
            policy.policy = AllOf(PcrSet({0: P1}))  # type: ignore[misc]
