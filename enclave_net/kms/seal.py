"""Keep an enclave secret across restarts: sealed with KMS, stored on the parent, opened only by
an enclave whose measurements the key policy names.

First boot: the secret is made in the enclave (the caller's `create`, e.g. from NSM randomness),
encrypted with KMS `Encrypt`, and the ciphertext blob is stored on the parent. Later boots fetch
the blob and call `Decrypt` with a `Recipient`: KMS answers only if the key policy allows this
enclave's attested PCRs (write it with `kms:RecipientAttestation:ImageSha384` / `PCR0`, and
`PCR16` for config measured into it), and encrypts the answer to this boot's ephemeral key. A
changed image or config gets `AccessDeniedException`; it never gets a new secret in place of the
old one, because `load_or_create` only creates when the store is empty.

The parent only ever holds ciphertext. The store is a file (`FileStore`, for code that runs
where the file persists) or the parent's blob endpoint (`ParentStore` / `BlobServer`, one
stream connection per read or write, over vsock in production). The endpoint is write-once.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from enclave_net.address import Address, connect_socket
from enclave_net.errors import EgressError
from enclave_net.kms._service import StreamService
from enclave_net.kms.client import KmsClient
from enclave_net.kms.errors import KmsError

__all__ = [
    "BlobServer",
    "BlobStore",
    "FileStore",
    "ParentStore",
    "SealedKeyError",
    "load_or_create",
    "seal_key",
    "sealing_key_policy",
    "unseal_key",
]

_log = logging.getLogger("enclave_net.kms.seal")

# KMS ciphertext blobs for a 4 KiB plaintext stay under 6 KiB; 64 KiB bounds hostile answers.
_MAX_BLOB = 64 * 1024
_TIMEOUT = 5.0
_HEADER = struct.Struct(">cI")  # op or status byte, payload length
_GET, _PUT = b"G", b"P"
_OK, _EMPTY, _FAIL = b"O", b"E", b"F"


class SealedKeyError(KmsError):
    """The sealed blob could not be stored or fetched."""


class BlobStore(Protocol):
    def read(self) -> bytes | None: ...

    def write(self, blob: bytes) -> None: ...


def _context(name: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    # The encryption context binds the blob to its purpose: a blob sealed for one name cannot be
    # replayed as another (KMS refuses a Decrypt whose context differs).
    return {"purpose": "enclave-sealed-key", "name": name, **(extra or {})}


def sealing_key_policy(
    enclave_principal: str,
    *,
    pcr0: str,
    pcr16: str,
    encrypters: Sequence[str] = (),
    actions: Sequence[str] = ("kms:Decrypt",),
) -> dict[str, Any]:
    """The key policy a sealed key needs (docs/kms.md): `enclave_principal` (the parent's role,
    whose credentials the enclave uses) and `encrypters` may `Encrypt`, which needs no
    attestation; `actions` are allowed only with an attestation whose PCR0 (the image) and
    PCR16 (the app's config) are these, in hex."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "The parent's role may seal (Encrypt needs no attestation)",
                "Effect": "Allow",
                "Principal": {"AWS": [*encrypters, enclave_principal]},
                "Action": "kms:Encrypt",
                "Resource": "*",
            },
            {
                "Sid": "Only this enclave image with this config may unseal",
                "Effect": "Allow",
                "Principal": {"AWS": enclave_principal},
                "Action": list(actions),
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {
                        "kms:RecipientAttestation:ImageSha384": pcr0,
                        "kms:RecipientAttestation:PCR16": pcr16,
                    }
                },
            },
        ],
    }


async def seal_key(
    kms: KmsClient,
    key_id: str,
    secret: bytes,
    *,
    name: str,
    context: Mapping[str, str] | None = None,
) -> bytes:
    """KMS `Encrypt` of `secret` under `key_id`; returns the ciphertext blob to store."""
    result = await kms.encrypt(key_id, secret, encryption_context=_context(name, context))
    return result.ciphertext_blob


async def unseal_key(
    kms: KmsClient,
    blob: bytes,
    *,
    key_id: str,
    name: str,
    context: Mapping[str, str] | None = None,
) -> bytes:
    """KMS `Decrypt` with this enclave's Recipient; refused unless the key policy allows it."""
    return await kms.decrypt(blob, key_id=key_id, encryption_context=_context(name, context))


async def load_or_create(
    kms: KmsClient,
    store: BlobStore,
    *,
    key_id: str,
    name: str,
    create: Callable[[], bytes],
    context: Mapping[str, str] | None = None,
) -> tuple[bytes, bool]:
    """(secret, created): unseal the stored blob, or on an empty store create, seal and store.

    Any failure to unseal propagates: a refused enclave must stop, not start with a new key.
    """
    blob = store.read()
    if blob is not None:
        return await unseal_key(kms, blob, key_id=key_id, name=name, context=context), False
    secret = create()
    blob = await seal_key(kms, key_id, secret, name=name, context=context)
    store.write(blob)
    _log.info("sealed a new %s under %s", name, key_id)
    return secret, True


class FileStore:
    """The blob in a file, written atomically (temporary file, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SealedKeyError(f"{self.path}: {exc.strerror}") from None
        if not data or len(data) > _MAX_BLOB:
            raise SealedKeyError(f"{self.path}: empty or over {_MAX_BLOB} bytes")
        return data

    def write(self, blob: bytes) -> None:
        if not blob or len(blob) > _MAX_BLOB:
            raise SealedKeyError(f"a sealed blob must be 1..{_MAX_BLOB} bytes")
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            temporary.replace(self.path)
        except OSError as exc:
            raise SealedKeyError(f"{self.path}: {exc.strerror}") from None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SealedKeyError("the blob endpoint closed mid-message")
        data += chunk
    return bytes(data)


def _recv_message(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, length = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > _MAX_BLOB:
        raise SealedKeyError(f"blob message of {length} bytes, over {_MAX_BLOB}")
    return kind, _recv_exact(sock, length)


class ParentStore:
    """The enclave's view of the parent's `BlobServer`."""

    def __init__(self, address: Address, *, timeout: float = _TIMEOUT) -> None:
        self._address = address
        self._timeout = timeout

    def _exchange(self, op: bytes, payload: bytes = b"") -> tuple[bytes, bytes]:
        try:
            with connect_socket(self._address, timeout=self._timeout) as sock:
                sock.sendall(_HEADER.pack(op, len(payload)) + payload)
                return _recv_message(sock)
        except (OSError, EgressError) as exc:
            raise SealedKeyError(f"blob endpoint {self._address}: {exc}") from None

    def read(self) -> bytes | None:
        status, payload = self._exchange(_GET)
        if status == _EMPTY:
            return None
        if status != _OK or not payload:
            raise SealedKeyError(f"blob endpoint {self._address} refused the read")
        return payload

    def write(self, blob: bytes) -> None:
        if not blob or len(blob) > _MAX_BLOB:
            raise SealedKeyError(f"a sealed blob must be 1..{_MAX_BLOB} bytes")
        status, _ = self._exchange(_PUT, blob)
        if status != _OK:
            raise SealedKeyError(f"blob endpoint {self._address} refused the write")


class BlobServer(StreamService):
    """The parent side: serves one `FileStore` on `address` (ciphertext only), in a thread."""

    name = "kms-blob-store"

    def __init__(self, address: Address, store: FileStore) -> None:
        super().__init__(address)
        self._store = store

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.sendall(self._answer(*_recv_message(conn)))
        except (OSError, SealedKeyError) as exc:
            _log.warning("blob endpoint: %s", exc)

    def _answer(self, op: bytes, payload: bytes) -> bytes:
        # One connection at a time (StreamService), so the read-then-write below is atomic.
        try:
            if op == _GET:
                blob = self._store.read()
                if blob is None:
                    return _HEADER.pack(_EMPTY, 0)
                return _HEADER.pack(_OK, len(blob)) + blob
            if op == _PUT:
                # Write-once: a second PUT would replace the only copy of a sealed key. An
                # operator who really wants a new key removes the file by hand.
                if self._store.read() is not None:
                    raise SealedKeyError("refusing to overwrite the stored sealed blob")
                self._store.write(payload)
                return _HEADER.pack(_OK, 0)
        except SealedKeyError as exc:
            _log.warning("blob endpoint: %s", exc)
        return _HEADER.pack(_FAIL, 0)
