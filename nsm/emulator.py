"""A software Nitro Secure Module with the real module's semantics.

- 32 PCRs of 48 bytes (SHA384). PCRs 0-15 are locked at boot and hold plausible measurements:
  PCR0/1/2 stand for the image, kernel and application, PCR3 (IAM role) is zero, PCR4 is
  `SHA384(0^48 || instance-id)` as AWS documents. In debug mode PCR0/1/2 are zero, as in the
  real debug documents in vectors/real. PCRs 16-31 start at zero, extend as
  `SHA384(old || data)` and can be locked.
- Error answers follow QEMU's device where AWS says nothing: InvalidIndex for an index past
  max_pcrs, ReadOnlyIndex for changing a locked PCR, InputTooLarge for an oversize request or
  attestation field, InvalidOperation for anything that does not decode.
- Attestation fields (user_data, nonce, public_key) are refused past `attestation_field_max`
  bytes, AWS's documented 1024 by default; real modules were seen signing larger ones, so
  `attestation_field_max=None` lifts the limit (see nsm.client.ATTESTATION_FIELD_MAX).
- Attestation documents have AWS's exact shape (built by `attestation.builder`) and are signed
  by a locally generated PKI that no default verifier trusts: its root is written out for the
  caller to pin explicitly. `profile` picks the era of real output to reproduce (serial numbers,
  extension order, payload map encoding, leaf lifetime, module_id format; see
  attestation._profiles): "2026", today's production shape, unless told otherwise.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from attestation import _profiles, builder
from nsm import _protocol, models
from nsm._transport import REQUEST_MAX
from nsm.client import ATTESTATION_FIELD_MAX, MAX_PCRS
from nsm.errors import ProtocolError

__all__ = ["BOOT_LOCKED_PCRS", "PCR_SIZE", "RANDOM_SIZE", "Emulator"]

PCR_SIZE = 48  # SHA384
#: PCRs 0-15 are locked from boot (AWS's nsm-check test, aws-nitro-enclaves-nsm-api).
BOOT_LOCKED_PCRS = 16
#: GetRandom answers 256 bytes (QEMU's NSM_RND_BUF_SIZE; nsm-lib "up to 256 bytes").
RANDOM_SIZE = 256
#: A fresh leaf is issued when the current one has less than this left, so that every
#: document is signed well inside its leaf's 3-hour window.
_LEAF_MARGIN = timedelta(minutes=10)
#: Intermediates are renewed when they would expire within this margin.
_CA_MARGIN = timedelta(hours=3, minutes=30)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def extend(old: bytes, data: bytes) -> bytes:
    """The PCR extend operation: SHA384(old || data)."""
    return hashlib.sha384(old + data).digest()


def _measure(label: str, seed: int | None) -> bytes:
    salt = os.urandom(16) if seed is None else seed.to_bytes(16, "big", signed=True)
    return extend(bytes(PCR_SIZE), hashlib.sha384(label.encode() + salt).digest())


class Emulator:
    """The module's state and request handling, without any I/O.

    `handle(request_bytes) -> answer_bytes` is the whole protocol surface; the Unix socket
    server and the LD_PRELOAD shim both feed it the exact ioctl bytes.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        debug: bool = False,
        pcrs: Mapping[int, bytes] | None = None,
        region: str = "us-east-1",
        profile: str | _profiles.Profile = "2026",
        indefinite: bool | None = None,
        attestation_field_max: int | None = ATTESTATION_FIELD_MAX,
        clock: Clock = _utc_now,
        random_source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._clock = clock
        # Replaceable only so that tests can compare two emulators byte for byte.
        self._random = random_source
        self._region = region
        self._profile = _profiles.profile(profile)
        # None: the profile's payload encoding; True/False override it.
        self._indefinite = self._profile.indefinite_payload if indefinite is None else indefinite
        if attestation_field_max is not None and attestation_field_max < 0:
            raise ValueError("attestation_field_max must be None or a non-negative size")
        self._field_max = attestation_field_max
        ident = (
            hashlib.sha256(b"nsm-emulator" + seed.to_bytes(16, "big", signed=True)).digest()
            if seed is not None
            else os.urandom(32)
        )
        self.instance_id = "i-" + ident[:9].hex()[:17]
        # The enclave id starts with the launch time; a seeded emulator launches at the top of
        # the hour, so that two runs within the same hour agree.
        launch = self._now()
        if seed is not None:
            launch = launch.replace(minute=0, second=0, microsecond=0)
        self.module_id = f"{self.instance_id}-enc{_profiles.enclave_id(launch, seed=seed)}"
        self.debug = debug

        self._pcrs = [bytes(PCR_SIZE) for _ in range(MAX_PCRS)]
        self._locked = [i < BOOT_LOCKED_PCRS for i in range(MAX_PCRS)]
        if not debug:
            self._pcrs[0] = _measure("PCR0 enclave image", seed)
            self._pcrs[1] = _measure("PCR1 kernel and bootstrap", seed)
            self._pcrs[2] = _measure("PCR2 application", seed)
        self._pcrs[4] = extend(bytes(PCR_SIZE), self.instance_id.encode())
        for index, value in (pcrs or {}).items():
            if not 0 <= index < BOOT_LOCKED_PCRS or len(value) != PCR_SIZE:
                raise ValueError(f"boot PCR {index} must be in 0..15 and {PCR_SIZE} bytes long")
            self._pcrs[index] = bytes(value)

        self._pki = _profiles.apply(
            builder.generate_pki(
                seed=seed, region=region, instance_id=self.instance_id, not_before=self._ca_start()
            ),
            self._profile,
        )
        self._leaf: builder.CertifiedKey | None = None

    # --- public -------------------------------------------------------------------------

    @property
    def root_pem(self) -> bytes:
        """The emulator's root certificate: pin it explicitly to verify its documents."""
        return self._pki.root_pem()

    @property
    def pki(self) -> builder.Pki:
        return self._pki

    @property
    def profile(self) -> _profiles.Profile:
        """The era of real NSM output this emulator reproduces."""
        return self._profile

    def pcr(self, index: int) -> bytes:
        with self._lock:
            return self._pcrs[index]

    def restart(self) -> None:
        """The enclave relaunched from the same EIF on the same instance: a new enclave id (so a
        new `module_id` and leaf certificate), the app-extendable PCRs (16 and up) zero and
        unlocked again; the boot PCRs, the instance and the PKI (the root callers pinned)
        stay."""
        with self._lock:
            enclave = _profiles.enclave_id(self._now(), seed=self._seed)
            self.module_id = f"{self.instance_id}-enc{enclave}"
            self._leaf = None
            for index in range(BOOT_LOCKED_PCRS, MAX_PCRS):
                self._pcrs[index] = bytes(PCR_SIZE)
                self._locked[index] = False

    def handle(self, request: bytes) -> bytes:
        """Answer one encoded request with one encoded response."""
        return _protocol.encode_response(self._answer(request))

    # --- request handling ---------------------------------------------------------------

    def _answer(self, raw: bytes) -> models.Response:
        if len(raw) > REQUEST_MAX:
            return models.ErrorResponse(models.ErrorCode.INPUT_TOO_LARGE)
        try:
            request = _protocol.decode_request(raw)
        except ProtocolError:
            return models.ErrorResponse(models.ErrorCode.INVALID_OPERATION)
        with self._lock:
            return self._dispatch(request)

    def _dispatch(self, request: models.Request) -> models.Response:
        match request:
            case models.DescribeNSM():
                return models.Description(
                    version_major=1,
                    version_minor=0,
                    version_patch=0,
                    module_id=self.module_id,
                    max_pcrs=MAX_PCRS,
                    locked_pcrs=frozenset(i for i in range(MAX_PCRS) if self._locked[i]),
                    digest=models.Digest.SHA384,
                )
            case models.DescribePCR(index=index):
                if index >= MAX_PCRS:
                    return models.ErrorResponse(models.ErrorCode.INVALID_INDEX)
                return models.PcrState(locked=self._locked[index], data=self._pcrs[index])
            case models.ExtendPCR(index=index, data=data):
                if index >= MAX_PCRS:
                    return models.ErrorResponse(models.ErrorCode.INVALID_INDEX)
                if self._locked[index]:
                    return models.ErrorResponse(models.ErrorCode.READ_ONLY_INDEX)
                self._pcrs[index] = extend(self._pcrs[index], data)
                return models.PcrExtended(self._pcrs[index])
            case models.LockPCR(index=index):
                if index >= MAX_PCRS:
                    return models.ErrorResponse(models.ErrorCode.INVALID_INDEX)
                if self._locked[index]:
                    return models.ErrorResponse(models.ErrorCode.READ_ONLY_INDEX)
                self._locked[index] = True
                return models.PcrLocked()
            case models.LockPCRs(range=range_):
                if range_ > MAX_PCRS:
                    return models.ErrorResponse(models.ErrorCode.INVALID_INDEX)
                for i in range(range_):
                    self._locked[i] = True
                return models.PcrsLocked()
            case models.GetRandom():
                return models.RandomBytes(self._random(RANDOM_SIZE))
            case models.Attestation():
                return self._attest(request)

    def _attest(self, request: models.Attestation) -> models.Response:
        fields = (request.user_data, request.nonce, request.public_key)
        limit = self._field_max
        if limit is not None and any(f is not None and len(f) > limit for f in fields):
            return models.ErrorResponse(models.ErrorCode.INPUT_TOO_LARGE)
        now = self._now()
        leaf = self._current_leaf(now)
        document = builder.build_document(
            leaf=leaf,
            cabundle=self._pki.cabundle,
            module_id=self.module_id,
            timestamp_ms=int(now.timestamp() * 1000),
            # "map of all locked PCRs at the moment the attestation document was generated"
            # (AWS attestation_process.md §2.2)
            pcrs={i: self._pcrs[i] for i in range(MAX_PCRS) if self._locked[i]},
            public_key=request.public_key,
            user_data=request.user_data,
            nonce=request.nonce,
            indefinite=self._indefinite,
        )
        return models.AttestationResponse(document)

    # --- PKI upkeep ---------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the emulator clock must return an aware datetime")
        return now.astimezone(UTC)

    def _ca_start(self) -> datetime:
        # Seeded emulators start their CAs at the top of the hour, so that two runs within the
        # same hour issue byte-identical certificates.
        now = self._now()
        if self._seed is not None:
            now = now.replace(minute=0, second=0, microsecond=0)
        return now - timedelta(hours=1)

    def _current_leaf(self, now: datetime) -> builder.CertifiedKey:
        if self._pki.instance.certificate.not_valid_after_utc - now < _CA_MARGIN:
            # Real intermediates rotate (the instance CA lives one day); so do ours. The root,
            # which callers have pinned, stays the same.
            renewed = self._pki.renew_intermediates(not_before=self._ca_start())
            self._pki = _profiles.apply(renewed, self._profile, root=self._pki.root)
            self._leaf = None
        leaf = self._leaf
        if leaf is None or leaf.certificate.not_valid_after_utc - now < _LEAF_MARGIN:
            leaf = _profiles.issue_leaf(
                self._pki, self._profile, module_id=self.module_id, issued=now
            )
            self._leaf = leaf
        return leaf
