"""Sealed keys: the same secret after an enclave restart, nothing for another image or config."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_net.address import parse_address
from enclave_net.kms.errors import AccessDeniedException, InvalidCiphertextException
from enclave_net.kms.recipient import Recipient
from enclave_net.kms.seal import (
    BlobServer,
    FileStore,
    ParentStore,
    SealedKeyError,
    load_or_create,
    unseal_key,
)
from nsm import Nsm
from nsm.emulator import Emulator
from tests.enclave_net.kms._support import KEY_ID, KmsWorld, booted, run, short_tempdir
from tests.enclave_net.kms.conftest import OTHER_IMAGE


@pytest.fixture
def parent() -> Iterator[tuple[ParentStore, Path]]:
    directory = short_tempdir()
    address = parse_address(f"unix:{directory}/blobs.sock")
    blob_file = directory / "oracle-key.sealed"
    with BlobServer(address, FileStore(blob_file)):
        yield ParentStore(address), blob_file
    shutil.rmtree(directory, ignore_errors=True)


def boot(world: KmsWorld, nsm: Nsm, store: ParentStore) -> tuple[bytes, bool]:
    """One enclave boot: a new Recipient (new RSA key), the sealed key loaded or created."""
    random = nsm.get_random  # the NSM's randomness, as the oracle makes its key today

    async def go() -> tuple[bytes, bool]:
        async with world.client(Recipient(nsm)) as kms:
            return await load_or_create(
                kms, store, key_id="alias/oracle", name="oracle-signer", create=lambda: random(32)
            )

    return run(go())


def test_the_same_key_after_a_restart_and_none_for_another_image(
    world: KmsWorld, emulator: Emulator, parent: tuple[ParentStore, Path]
) -> None:
    store, blob_file = parent
    first, created = boot(world, booted(emulator), store)
    assert created and len(first) == 32
    assert first not in blob_file.read_bytes()  # the parent holds ciphertext only

    # Restart: same image and config (same PCRs), new Recipient key, new document.
    again, created = boot(world, booted(Emulator(seed=70)), store)
    assert (again, created) == (first, False)

    # Another image: KMS refuses, and no new key replaces the stored one.
    with pytest.raises(AccessDeniedException):
        boot(world, booted(OTHER_IMAGE), store)
    # Same image, another config in PCR16: refused as well.
    with pytest.raises(AccessDeniedException):
        boot(world, booted(Emulator(seed=70), b"oracle config v2"), store)
    assert boot(world, booted(emulator), store) == (first, False)


def test_the_blob_is_bound_to_its_name(
    world: KmsWorld, emulator: Emulator, parent: tuple[ParentStore, Path]
) -> None:
    store, _ = parent
    boot(world, booted(emulator), store)
    blob = store.read()
    assert blob is not None

    async def go() -> bytes:
        async with world.client(Recipient(booted(emulator))) as kms:
            return await unseal_key(kms, blob, key_id=KEY_ID, name="another-purpose")

    with pytest.raises(InvalidCiphertextException):
        run(go())


def test_the_parent_store_is_write_once(parent: tuple[ParentStore, Path]) -> None:
    store, blob_file = parent
    assert store.read() is None
    store.write(b"first blob")
    with pytest.raises(SealedKeyError, match="refused the write"):
        store.write(b"second blob")
    assert store.read() == b"first blob" == blob_file.read_bytes()


def test_store_errors_are_typed(tmp_path: Path) -> None:
    nowhere = short_tempdir()
    with pytest.raises(SealedKeyError, match="blob endpoint"):
        ParentStore(parse_address(f"unix:{nowhere}/none.sock")).read()
    nowhere.rmdir()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(SealedKeyError, match="empty"):
        FileStore(empty).read()
    with pytest.raises(SealedKeyError):
        FileStore(tmp_path / "f").write(b"")
