"""AWS credentials for the enclave, handed over by the parent on a vsock port.

The enclave cannot reach the instance metadata service, so the parent fetches credentials with
botocore's own provider chain (environment, shared files, container or instance role: whatever
the parent instance is configured with) and serves them on one stream port. Each connection gets
one JSON object and is closed:

    {"AccessKeyId": ..., "SecretAccessKey": ..., "Token": ... or null, "Expiration": ISO-8601}

`Expiration` is when the enclave must ask again. The parent never promises more than
`serve_ttl` (5 minutes by default): botocore refreshes role credentials at least 10 minutes
before they expire, so whatever it returns stays valid for longer than that promise. The
enclave (`ParentCredentials`) asks again `refresh_margin` before `Expiration`.

Trust: the parent is not trusted with secrets, but these are the parent's own credentials; a
parent that lies can only make KMS refuse. Nothing here logs a secret, a token or an access key
id, and the credential types hide them from `repr`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from enclave_net.address import Address, connect_socket
from enclave_net.errors import EgressError
from enclave_net.kms._service import StreamService
from enclave_net.kms.errors import CredentialsError

__all__ = [
    "DEFAULT_SERVE_TTL",
    "Credentials",
    "CredentialsServer",
    "ParentCredentials",
    "StaticCredentials",
    "botocore_chain",
]

_log = logging.getLogger("enclave_net.kms.credentials")

DEFAULT_SERVE_TTL = _dt.timedelta(minutes=5)
DEFAULT_REFRESH_MARGIN = _dt.timedelta(seconds=60)
# One JSON object of three strings and a date: 16 KiB is far more than any session token.
_MAX_ANSWER = 16 * 1024
_TIMEOUT = 5.0

Clock = Callable[[], _dt.datetime]


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of AWS credentials. `repr` shows none of it."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: _dt.datetime | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.session_token,
                "Expiration": None if self.expiration is None else self.expiration.isoformat(),
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Credentials:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CredentialsError(
                f"credentials endpoint answered non-JSON ({type(exc).__name__})"
            ) from None
        if not isinstance(obj, dict):
            raise CredentialsError("credentials endpoint answered something other than an object")
        key, secret, token, expiry = (
            obj.get(name) for name in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
        )
        if not isinstance(key, str) or not key or not isinstance(secret, str) or not secret:
            raise CredentialsError("credentials answer lacks AccessKeyId or SecretAccessKey")
        if token is not None and not isinstance(token, str):
            raise CredentialsError("credentials answer has a non-string Token")
        expiration = None
        if expiry is not None:
            try:
                expiration = _dt.datetime.fromisoformat(str(expiry))
            except ValueError:
                raise CredentialsError("credentials answer has an unreadable Expiration") from None
            if expiration.tzinfo is None:
                raise CredentialsError("credentials Expiration has no time zone")
        return cls(key, secret, token, expiration)


class CredentialSource(ABC):
    """Anything that can give current credentials (the KMS client awaits `get`)."""

    @abstractmethod
    async def get(self) -> Credentials:
        """The credentials to sign the next request with."""


class StaticCredentials(CredentialSource):
    """Fixed credentials (tests, or a parent-side tool)."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def get(self) -> Credentials:
        return self._credentials

    def __repr__(self) -> str:
        return "StaticCredentials(...)"


class ParentCredentials(CredentialSource):
    """The enclave side: fetch from the parent endpoint, cache, refresh before `Expiration`."""

    def __init__(
        self,
        address: Address,
        *,
        refresh_margin: _dt.timedelta = DEFAULT_REFRESH_MARGIN,
        timeout: float = _TIMEOUT,
        clock: Clock = _utcnow,
    ) -> None:
        self._address = address
        self._margin = refresh_margin
        self._timeout = timeout
        self._clock = clock
        self._cached: Credentials | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ParentCredentials({self._address})"

    def _fresh(self, credentials: Credentials | None) -> bool:
        if credentials is None:
            return False
        if credentials.expiration is None:
            return True
        return self._clock() < credentials.expiration - self._margin

    async def get(self) -> Credentials:
        async with self._lock:
            if not self._fresh(self._cached):
                fetched = await asyncio.to_thread(self._fetch)
                if not self._fresh(fetched):
                    raise CredentialsError(
                        "the parent served credentials that expire within the refresh margin "
                        f"({self._margin}); is the parent's clock or role session wrong?"
                    )
                self._cached = fetched
            assert self._cached is not None
            return self._cached

    def _fetch(self) -> Credentials:
        try:
            sock = connect_socket(self._address, timeout=self._timeout)
        except (OSError, EgressError) as exc:
            raise CredentialsError(f"credentials endpoint {self._address}: {exc}") from None
        data = bytearray()
        with sock:
            try:
                while chunk := sock.recv(4096):
                    data += chunk
                    if len(data) > _MAX_ANSWER:
                        raise CredentialsError(f"credentials answer over {_MAX_ANSWER} bytes")
            except TimeoutError:
                raise CredentialsError(f"credentials endpoint {self._address} timed out") from None
            except OSError as exc:
                raise CredentialsError(
                    f"credentials endpoint {self._address}: {exc.strerror}"
                ) from None
        return Credentials.from_json(bytes(data))


def botocore_chain() -> Callable[[], Credentials]:
    """The parent's credentials from botocore's default provider chain (env, files, IMDS...)."""
    import botocore.session

    session = botocore.session.get_session()

    def get() -> Credentials:
        found = session.get_credentials()
        if found is None:
            raise CredentialsError("botocore found no credentials on the parent")
        # get_frozen_credentials refreshes role credentials when they near expiry.
        frozen = found.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return get


class CredentialsServer(StreamService):
    """The parent side: one JSON answer per connection, on `address`, in a thread."""

    name = "kms-credentials"

    def __init__(
        self,
        address: Address,
        source: Callable[[], Credentials],
        *,
        serve_ttl: _dt.timedelta = DEFAULT_SERVE_TTL,
        clock: Clock = _utcnow,
    ) -> None:
        super().__init__(address)
        self._source = source
        self._ttl = serve_ttl
        self._clock = clock
        self.served = 0

    def answer(self) -> Credentials:
        """What the next connection gets: the source's credentials, promised for `serve_ttl`."""
        current = self._source()
        promise = self._clock() + self._ttl
        if current.expiration is not None:
            promise = min(promise, current.expiration)
        return Credentials(
            current.access_key_id, current.secret_access_key, current.session_token, promise
        )

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(self.answer().to_json())
            self.served += 1
        except OSError as exc:
            _log.warning("credentials connection failed: %s", exc.strerror)
        except Exception as exc:
            # Only the type: a provider's message could quote what it read.
            _log.error("no credentials to serve: %s", type(exc).__name__)
