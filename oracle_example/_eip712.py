"""keccak256, EIP-712 word encoding, the EIP-712 domain, and Ethereum addresses.

Every struct the oracle signs has only static fields, so EIP-712 reduces to 32-byte ABI words
and needs no general encoder (reference/oracle.md §2.4). eth-account is the reference in tests
only; the enclave needs nothing beyond pycryptodome and coincurve.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# pycryptodome's keccak is the original (pre-FIPS) Keccak that Ethereum uses; hashlib.sha3_256
# is FIPS SHA-3 and gives different digests (reference/oracle.md §2.5, pitfall 2).
from Crypto.Hash import keccak as _keccak

from oracle_example.errors import ReportFormatError

__all__ = [
    "ADDRESS_LENGTH",
    "EIP712_DOMAIN_FIELDS",
    "EIP712_DOMAIN_TYPE",
    "WORD",
    "Eip712Domain",
    "encode_type",
    "encode_word",
    "keccak256",
    "parse_address",
    "parse_bytes32",
    "to_checksum_address",
    "type_hash",
]

#: One ABI word (EIP-712 `encodeData` encodes every static value as 32 bytes).
WORD = 32
#: An Ethereum address is the last 20 bytes of keccak256 of the public key.
ADDRESS_LENGTH = 20
_MAX_STRING_BYTES = 256
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_FIELD_TYPE = re.compile(r"(u?int)(\d+)|bytes32|address|string")


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak256 (not FIPS SHA3-256)."""
    h = _keccak.new(digest_bits=256)
    h.update(data)
    return h.digest()


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


def parse_bytes32(text: object) -> bytes:
    if not isinstance(text, str) or not _HEX_BYTES32.fullmatch(text):
        raise ReportFormatError(f"not a 0x-hex bytes32: {text!r}")
    return bytes.fromhex(text[2:])


#: The domain struct with all four fields (reference/oracle.md §2.4): chainId + verifyingContract
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
