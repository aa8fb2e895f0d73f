"""Ethereum primitives, none of them oracle-specific: keccak256, EIP-712 words, `encodeType`
and the domain, addresses (EIP-55), and secp256k1 signing and recovery over a 32-byte digest.

Every struct the oracle signs has only static fields, so EIP-712 reduces to 32-byte ABI words
and needs no general encoder (EIP-712 `encodeData`). Signatures are r || s || v with
v = recid + 27, what OpenZeppelin's `ECDSA.recover` and `ecrecover` take; libsecp256k1 signs
low-s, and high s is refused on recovery as OpenZeppelin's ECDSA.sol does. safe-pysha3
for keccak (docs/dependencies.md: why not pycryptodome), coincurve (libsecp256k1) for the curve;
eth-account is the reference in tests only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import coincurve

# safe-pysha3's keccak_256 is the original (pre-FIPS) Keccak that Ethereum uses; hashlib.sha3_256
# is FIPS 202 SHA-3, which pads differently, and gives different digests.
import sha3

from oracle_example.errors import ReportFormatError, SignatureFormatError

__all__ = [
    "ADDRESS_LENGTH",
    "EIP712_DOMAIN_FIELDS",
    "EIP712_DOMAIN_TYPE",
    "SECP256K1_N",
    "SIGNATURE_LENGTH",
    "WORD",
    "Eip712Domain",
    "address_of",
    "encode_type",
    "encode_word",
    "keccak256",
    "parse_address",
    "parse_bytes32",
    "recover_address",
    "recover_public_key",
    "sign_digest",
    "to_checksum_address",
    "type_hash",
]

#: An Ethereum address is the last 20 bytes of keccak256 of the public key.
ADDRESS_LENGTH = 20
#: r(32) || s(32) || v(1).
SIGNATURE_LENGTH = 65
#: Order of the secp256k1 group; s above N/2 is the malleable twin OpenZeppelin rejects.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_UNCOMPRESSED_KEY_LENGTH = 65
_V_OFFSET = 27  # Ethereum's v = recid + 27 (yellow paper, ecrecover)
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak256 (not FIPS SHA3-256)."""
    digest: bytes = sha3.keccak_256(data).digest()
    return digest


def to_checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address."""
    if len(address) != ADDRESS_LENGTH:
        raise ReportFormatError(f"an address is 20 bytes, got {len(address)}")
    lower = address.hex()
    digest = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(digest[i], 16) >= 8 else c for i, c in enumerate(lower)
    )


def parse_address(text: object) -> bytes:
    """`0x` + 40 hex digits; all-lower or all-upper is accepted, mixed case must be valid EIP-55."""
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise ReportFormatError(f"not a 0x-hex address: {text!r}")
    raw = bytes.fromhex(text[2:])
    body = text[2:]
    if body != body.lower() and body != body.upper() and to_checksum_address(raw) != text:
        raise ReportFormatError(f"bad EIP-55 checksum in {text!r}")
    return raw


#: One ABI word (EIP-712 `encodeData` encodes every static value as 32 bytes).
WORD = 32
_MAX_STRING_BYTES = 256
_HEX_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_FIELD_TYPE = re.compile(r"(u?int)(\d+)|bytes32|address|string")


def encode_type(name: str, fields: Sequence[tuple[str, str]]) -> str:
    """EIP-712 `encodeType` for a struct without struct members: `Name(type1 name1,...)`."""
    return f"{name}({','.join(f'{t} {n}' for n, t in fields)})"


def type_hash(name: str, fields: Sequence[tuple[str, str]]) -> bytes:
    return keccak256(encode_type(name, fields).encode("ascii"))


def encode_word(solidity_type: str, value: object) -> bytes:
    """One value as its EIP-712 `encodeData` word; out-of-range values are refused, not wrapped."""
    match = _FIELD_TYPE.fullmatch(solidity_type)
    if match is None:
        raise ReportFormatError(f"unsupported EIP-712 field type {solidity_type!r}")
    if solidity_type == "bytes32":
        if not isinstance(value, bytes) or len(value) != WORD:
            raise ReportFormatError(f"bytes32 needs exactly 32 bytes, got {value!r}")
        return value
    if solidity_type == "address":
        if not isinstance(value, bytes) or len(value) != ADDRESS_LENGTH:
            raise ReportFormatError(f"address needs exactly 20 bytes, got {value!r}")
        return value.rjust(WORD, b"\x00")
    if solidity_type == "string":
        if not isinstance(value, str):
            raise ReportFormatError(f"string field needs str, got {type(value).__name__}")
        return keccak256(value.encode("utf-8"))
    # bool is an int subclass; a True where a number belongs is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ReportFormatError(f"{solidity_type} needs an int, got {type(value).__name__}")
    kind, bits = match.group(1), int(match.group(2))
    if kind == "uint":
        if not 0 <= value < 1 << bits:
            raise ReportFormatError(f"{value} does not fit {solidity_type}")
        return value.to_bytes(WORD, "big")
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ReportFormatError(f"{value} does not fit {solidity_type}")
    # Two's complement over the whole word, as the ABI sign-extends intN.
    return value.to_bytes(WORD, "big", signed=True)


def parse_bytes32(text: object) -> bytes:
    if not isinstance(text, str) or not _HEX_BYTES32.fullmatch(text):
        raise ReportFormatError(f"not a 0x-hex bytes32: {text!r}")
    return bytes.fromhex(text[2:])


#: The domain struct with all four fields (EIP-712 `EIP712Domain`): chainId + verifyingContract
#: tie a signature to one consumer contract.
EIP712_DOMAIN_FIELDS: tuple[tuple[str, str], ...] = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
)
EIP712_DOMAIN_TYPE = encode_type("EIP712Domain", EIP712_DOMAIN_FIELDS)
_DOMAIN_TYPE_HASH = keccak256(EIP712_DOMAIN_TYPE.encode("ascii"))


@dataclass(frozen=True, kw_only=True)
class Eip712Domain:
    """One EIP-712 signing domain. Off-chain-only consumers use chainId 0 and the zero address."""

    name: str = "TEE Price Oracle"
    version: str = "1"
    chain_id: int = 0
    verifying_contract: bytes = b"\x00" * ADDRESS_LENGTH

    def __post_init__(self) -> None:
        labelled: tuple[tuple[str, object], ...] = (("name", self.name), ("version", self.version))
        for label, text in labelled:
            if not isinstance(text, str) or not text or len(text.encode()) > _MAX_STRING_BYTES:
                raise ReportFormatError(f"domain {label} must be a non-empty short string")
        encode_word("uint256", self.chain_id)
        encode_word("address", self.verifying_contract)

    @property
    def separator(self) -> bytes:
        """`hashStruct(EIP712Domain)`, the domainSeparator."""
        return keccak256(
            _DOMAIN_TYPE_HASH
            + b"".join(
                encode_word(t, v)
                for (_, t), v in zip(
                    EIP712_DOMAIN_FIELDS,
                    (self.name, self.version, self.chain_id, self.verifying_contract),
                    strict=True,
                )
            )
        )

    def to_json(self) -> dict[str, object]:
        """The `domain` member of eth-account's `full_message`."""
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }

    @classmethod
    def from_json(cls, obj: object) -> Eip712Domain:
        if not isinstance(obj, dict) or set(obj) != {n for n, _ in EIP712_DOMAIN_FIELDS}:
            raise ReportFormatError(f"domain must have exactly {EIP712_DOMAIN_TYPE}")
        chain_id = obj["chainId"]
        if not isinstance(chain_id, int) or isinstance(chain_id, bool):
            raise ReportFormatError("domain chainId must be an integer")
        name, version = obj["name"], obj["version"]
        if not isinstance(name, str) or not isinstance(version, str):
            raise ReportFormatError("domain name and version must be strings")
        return cls(
            name=name,
            version=version,
            chain_id=chain_id,
            verifying_contract=parse_address(obj["verifyingContract"]),
        )


def address_of(public_key: bytes) -> bytes:
    """keccak256(X || Y)[12:] of a 65-byte uncompressed secp256k1 key (Ethereum's address)."""
    if len(public_key) != _UNCOMPRESSED_KEY_LENGTH or public_key[0] != 0x04:
        raise SignatureFormatError("public key must be 65 bytes, uncompressed (0x04 || X || Y)")
    return keccak256(public_key[1:])[12:]


def sign_digest(digest: bytes, key: coincurve.PrivateKey) -> bytes:
    """r || s || v over a 32-byte digest, v = recid + 27.

    `hasher=None` signs the digest itself; coincurve's default would sign sha256(digest) and
    the signature would recover to a stranger (coincurve keys.py: `hasher=sha256` by default).
    """
    if len(digest) != 32:
        raise ReportFormatError("a digest is 32 bytes")
    raw: bytes = key.sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes([raw[64] + _V_OFFSET])


def recover_public_key(digest: bytes, signature: bytes) -> bytes:
    """The 65-byte key that made `signature` over `digest`; refuses v, s or length out of form."""
    if len(digest) != 32:
        raise ReportFormatError("a digest is 32 bytes")
    if len(signature) != SIGNATURE_LENGTH:
        raise SignatureFormatError(f"signature must be {SIGNATURE_LENGTH} bytes")
    v = signature[64]
    if v not in (_V_OFFSET, _V_OFFSET + 1):
        raise SignatureFormatError(f"v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        raise SignatureFormatError("r or s out of range (high s is refused, as OpenZeppelin does)")
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - _V_OFFSET]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises bare Exception/ValueError for unrecoverable sigs
        raise SignatureFormatError(f"signature recovers no key: {exc}") from exc
    out: bytes = key.format(compressed=False)
    return out


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address that signed `digest` (what `ecrecover` returns)."""
    return address_of(recover_public_key(digest, signature))
