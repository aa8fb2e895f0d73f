"""EVM plumbing for the parent-side tools: JSON-RPC, the ABI subset we use, signed transactions.

Why no web3.py: the relay and the registry tool need five JSON-RPC methods, the ABI of two
contracts (static words, `bytes`, `string`, static tuples) and one transaction type. Plain
JSON-RPC over HTTP (`urllib`, with a timeout on every call) and an EIP-1559 transaction signed
with coincurve and RLP-encoded here keep the runtime dependencies to what the oracle already has
(coincurve, safe-pysha3). eth-account and eth-abi stay in the tests, as cross-checks of the
transaction hash, the signature and the ABI encoding.

`Anvil` starts Foundry's local node from the pinned npm package on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import coincurve

from oracle_example.errors import OracleExampleError
from oracle_example.eth import (
    SECP256K1_N,
    address_of,
    keccak256,
    sign_digest,
    to_checksum_address,
)
from oracle_example.solc import Artifact, node_tool

__all__ = [
    "Anvil",
    "ChainError",
    "Contract",
    "RevertError",
    "RpcClient",
    "RpcError",
    "TransactionFailed",
    "Wallet",
    "abi_decode",
    "abi_encode",
    "canonical_type",
    "gas_used",
    "rlp_encode",
    "selector",
]

_WORD = 32
_RECEIPT_POLL_S = 0.05
_INT_TYPE = re.compile(r"(u?)int(\d*)")
_BYTES_N = re.compile(r"bytes(\d+)")
AbiParam = Mapping[str, Any]
"""One entry of an ABI's `inputs`/`outputs`: {"type": ..., "components": [...]}."""


class ChainError(OracleExampleError):
    """Talking to the chain failed: transport, JSON-RPC error, or a reverted transaction."""

    code = "chain.error"


class RpcError(ChainError):
    """The node answered with a JSON-RPC error (or nothing usable)."""

    code = "chain.rpc"

    def __init__(self, message: str, *, rpc_code: int | None = None, data: object = None) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code
        self.data = data


class RevertError(ChainError):
    """A call or transaction reverted; `name`/`args` decode a custom error of the contract."""

    code = "chain.revert"

    def __init__(self, message: str, *, data: bytes, name: str | None, args: tuple[Any, ...]):
        super().__init__(message)
        self.data = data
        self.name = name
        self.args_ = args


class TransactionFailed(ChainError):
    """A mined transaction has status 0, or no receipt arrived in time."""

    code = "chain.tx_failed"


# --- ABI ------------------------------------------------------------------------------------------


def canonical_type(param: AbiParam) -> str:
    """`(bytes32,int256,...)` for a tuple, else the type as written (for selectors)."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def selector(signature: str) -> bytes:
    return keccak256(signature.encode("ascii"))[:4]


def _is_dynamic(param: AbiParam) -> bool:
    kind = str(param["type"])
    if kind in ("bytes", "string") or kind.endswith("[]"):
        return True
    if kind == "tuple":
        return any(_is_dynamic(c) for c in param["components"])
    return False


def _encode_static(param: AbiParam, value: Any) -> bytes:
    kind = str(param["type"])
    if kind == "tuple":
        comps = param["components"]
        values = [value[c["name"]] for c in comps] if isinstance(value, Mapping) else list(value)
        if len(values) != len(comps):
            raise ChainError(f"tuple needs {len(comps)} values, got {len(values)}")
        return b"".join(_encode_static(c, v) for c, v in zip(comps, values, strict=True))
    if kind == "address":
        if not isinstance(value, bytes) or len(value) != 20:
            raise ChainError(f"address needs 20 bytes, got {value!r}")
        return value.rjust(_WORD, b"\x00")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ChainError(f"bool needs a bool, got {value!r}")
        return int(value).to_bytes(_WORD, "big")
    if match := _BYTES_N.fullmatch(kind):
        size = int(match.group(1))
        if not isinstance(value, bytes) or len(value) != size:
            raise ChainError(f"{kind} needs exactly {size} bytes")
        return value.ljust(_WORD, b"\x00")
    if match := _INT_TYPE.fullmatch(kind):
        bits = int(match.group(2) or 256)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ChainError(f"{kind} needs an int, got {value!r}")
        low, high = (0, 1 << bits) if match.group(1) else (-(1 << (bits - 1)), 1 << (bits - 1))
        if not low <= value < high:
            raise ChainError(f"{value} does not fit {kind}")
        return value.to_bytes(_WORD, "big", signed=not match.group(1))
    raise ChainError(f"ABI type {kind} is not supported here")


def abi_encode(params: Sequence[AbiParam], values: Sequence[Any]) -> bytes:
    """Head/tail ABI encoding of static types, static tuples, `bytes` and `string`."""
    if len(params) != len(values):
        raise ChainError(f"{len(params)} parameters, {len(values)} values")
    heads: list[bytes] = []
    tails: list[bytes] = []
    head_size = sum(
        _WORD if _is_dynamic(p) else len(_encode_static(p, v))
        for p, v in zip(params, values, strict=True)
    )
    offset = head_size
    for param, value in zip(params, values, strict=True):
        kind = str(param["type"])
        if kind in ("bytes", "string"):
            raw = value.encode("utf-8") if kind == "string" and isinstance(value, str) else value
            if not isinstance(raw, bytes):
                raise ChainError(f"{kind} needs {'str' if kind == 'string' else 'bytes'}")
            padded = raw + b"\x00" * (-len(raw) % _WORD)
            tail = len(raw).to_bytes(_WORD, "big") + padded
            heads.append(offset.to_bytes(_WORD, "big"))
            tails.append(tail)
            offset += len(tail)
        elif _is_dynamic(param):
            raise ChainError(f"dynamic ABI type {canonical_type(param)} is not supported here")
        else:
            heads.append(_encode_static(param, value))
    return b"".join(heads) + b"".join(tails)


def _decode_static(param: AbiParam, data: bytes, at: int) -> tuple[Any, int]:
    kind = str(param["type"])
    if kind == "tuple":
        out = []
        for comp in param["components"]:
            value, at = _decode_static(comp, data, at)
            out.append(value)
        return tuple(out), at
    word = data[at : at + _WORD]
    if len(word) != _WORD:
        raise ChainError("ABI data too short")
    if kind == "address":
        return word[12:], at + _WORD
    if kind == "bool":
        return word[-1] == 1, at + _WORD
    if match := _BYTES_N.fullmatch(kind):
        return word[: int(match.group(1))], at + _WORD
    if match := _INT_TYPE.fullmatch(kind):
        return int.from_bytes(word, "big", signed=not match.group(1)), at + _WORD
    raise ChainError(f"ABI type {kind} is not supported here")


def abi_decode(params: Sequence[AbiParam], data: bytes) -> tuple[Any, ...]:
    """Inverse of `abi_encode` for the same subset; `string` decodes to str."""
    out: list[Any] = []
    at = 0
    for param in params:
        kind = str(param["type"])
        if kind in ("bytes", "string"):
            offset = int.from_bytes(data[at : at + _WORD], "big")
            length = int.from_bytes(data[offset : offset + _WORD], "big")
            raw = data[offset + _WORD : offset + _WORD + length]
            if len(raw) != length:
                raise ChainError("ABI data too short")
            out.append(raw.decode("utf-8", "replace") if kind == "string" else raw)
            at += _WORD
        else:
            value, at = _decode_static(param, data, at)
            out.append(value)
    return tuple(out)


# --- RLP and EIP-1559 transactions ----------------------------------------------------------------

RlpItem = bytes | int | Sequence["RlpItem"]


def rlp_encode(item: RlpItem) -> bytes:
    """Recursive Length Prefix (Ethereum yellow paper, appendix B); ints as minimal big-endian."""
    if isinstance(item, int):
        if item < 0:
            raise ChainError("RLP encodes non-negative integers only")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _rlp_length(len(item), 0x80) + item
    payload = b"".join(rlp_encode(x) for x in item)
    return _rlp_length(len(payload), 0xC0) + payload


def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(size)]) + size


@dataclass(frozen=True)
class Wallet:
    """A transaction key (the relay's or the registry owner's; never the enclave's)."""

    key: coincurve.PrivateKey

    @classmethod
    def from_hex(cls, text: str) -> Wallet:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
        if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
            raise ChainError("a transaction key is 32 bytes in 1..n-1, as hex")
        return cls(coincurve.PrivateKey(raw))

    @property
    def address(self) -> bytes:
        return address_of(self.key.public_key.format(compressed=False))

    def sign_1559(
        self,
        *,
        chain_id: int,
        nonce: int,
        max_priority_fee: int,
        max_fee: int,
        gas: int,
        to: bytes | None,
        value: int,
        data: bytes,
    ) -> bytes:
        """The raw type-2 transaction (EIP-1559): 0x02 || rlp([..., yParity, r, s])."""
        fields: list[RlpItem] = [
            chain_id,
            nonce,
            max_priority_fee,
            max_fee,
            gas,
            b"" if to is None else to,
            value,
            data,
            [],
        ]
        signature = sign_digest(keccak256(b"\x02" + rlp_encode(fields)), self.key)
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:64], "big")
        return b"\x02" + rlp_encode([*fields, signature[64] - 27, r, s])


# --- JSON-RPC -------------------------------------------------------------------------------------


def _hex(value: int | bytes) -> str:
    return hex(value) if isinstance(value, int) else "0x" + value.hex()


def _unhex(text: object) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise RpcError(f"expected 0x-hex, got {text!r}")
    body = text[2:]
    return bytes.fromhex(body if len(body) % 2 == 0 else "0" + body)


def _quantity(text: object) -> int:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise RpcError(f"expected a 0x quantity, got {text!r}")
    return int(text, 16)


class RpcClient:
    """Plain JSON-RPC 2.0 over HTTP POST; every call has `timeout` seconds."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ChainError(f"RPC URL must be http(s)://, got {url!r}")
        self.url = url
        self.timeout = timeout
        self._next_id = 0

    def call(self, method: str, *params: object) -> Any:
        self._next_id += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # Some nodes answer JSON-RPC errors with HTTP 4xx/5xx and a JSON body.
            try:
                answer = json.loads(exc.read())
            except ValueError:
                raise RpcError(f"{method}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise RpcError(f"{method}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(answer, dict):
            raise RpcError(f"{method}: the answer is not a JSON-RPC object")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise RpcError(f"{method}: malformed error {error!r}")
            raise RpcError(
                f"{method}: {error.get('message')}",
                rpc_code=error.get("code"),
                data=error.get("data"),
            )
        if "result" not in answer:
            raise RpcError(f"{method}: no result")
        return answer["result"]

    def chain_id(self) -> int:
        return _quantity(self.call("eth_chainId"))

    def block_timestamp(self, block: str = "latest") -> int:
        header = self.call("eth_getBlockByNumber", block, False)
        if not isinstance(header, dict):
            raise RpcError(f"no block {block}")
        return _quantity(header["timestamp"])

    def nonce(self, address: bytes) -> int:
        return _quantity(self.call("eth_getTransactionCount", _hex(address), "pending"))

    def eth_call(self, to: bytes, data: bytes, *, sender: bytes | None = None) -> bytes:
        tx: dict[str, str] = {"to": _hex(to), "data": _hex(data)}
        if sender is not None:
            tx["from"] = _hex(sender)
        return _unhex(self.call("eth_call", tx, "pending"))

    def estimate_gas(self, sender: bytes, to: bytes | None, data: bytes) -> int:
        tx: dict[str, str] = {"from": _hex(sender), "data": _hex(data)}
        if to is not None:
            tx["to"] = _hex(to)
        return _quantity(self.call("eth_estimateGas", tx, "pending"))

    def fees(self) -> tuple[int, int]:
        """(max priority fee, max fee): twice the latest base fee plus the suggested tip."""
        header = self.call("eth_getBlockByNumber", "latest", False)
        base = _quantity(header.get("baseFeePerGas", "0x0")) if isinstance(header, dict) else 0
        tip = _quantity(self.call("eth_maxPriorityFeePerGas"))
        return tip, 2 * base + tip

    def receipt(self, tx_hash: bytes, *, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.call("eth_getTransactionReceipt", _hex(tx_hash))
            if isinstance(receipt, dict):
                return receipt
            if time.monotonic() > deadline:
                raise TransactionFailed(f"no receipt for 0x{tx_hash.hex()} after {timeout} s")
            time.sleep(_RECEIPT_POLL_S)

    def transact(
        self,
        wallet: Wallet,
        to: bytes | None,
        data: bytes,
        *,
        gas: int | None = None,
        receipt_timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Sign, send, wait for the receipt; raise `TransactionFailed` unless status is 1."""
        chain_id = self.chain_id()
        if gas is None:
            # 20 % over the estimate: the estimate is exact for this state, and a later block
            # may touch one more cold slot.
            gas = self.estimate_gas(wallet.address, to, data) * 6 // 5
        tip, max_fee = self.fees()
        raw = wallet.sign_1559(
            chain_id=chain_id,
            nonce=self.nonce(wallet.address),
            max_priority_fee=tip,
            max_fee=max_fee,
            gas=gas,
            to=to,
            value=0,
            data=data,
        )
        tx_hash = _unhex(self.call("eth_sendRawTransaction", _hex(raw)))
        receipt = self.receipt(tx_hash, timeout=receipt_timeout)
        if _quantity(receipt.get("status")) != 1:
            raise TransactionFailed(f"transaction 0x{tx_hash.hex()} reverted")
        return receipt


# --- contracts ------------------------------------------------------------------------------------


class Contract:
    """A deployed contract: calls, transactions and custom-error decoding from its ABI."""

    def __init__(self, rpc: RpcClient, address: bytes, abi: Sequence[Mapping[str, Any]]) -> None:
        self.rpc = rpc
        self.address = address
        self.deploy_receipt: dict[str, Any] | None = None
        """The creation transaction's receipt, when this object deployed the contract."""
        self._functions = {e["name"]: e for e in abi if e.get("type") == "function"}
        self._errors = {
            selector(f"{e['name']}({','.join(canonical_type(i) for i in e['inputs'])})"): e
            for e in abi
            if e.get("type") == "error"
        }

    @property
    def checksum(self) -> str:
        return to_checksum_address(self.address)

    def calldata(self, name: str, *args: Any) -> bytes:
        fn = self._functions.get(name)
        if fn is None:
            raise ChainError(f"no function {name} in the ABI")
        inputs = fn["inputs"]
        signature = f"{name}({','.join(canonical_type(i) for i in inputs)})"
        return selector(signature) + abi_encode(inputs, args)

    def call(self, name: str, *args: Any, sender: bytes | None = None) -> tuple[Any, ...]:
        """`eth_call` on the pending block; a revert raises `RevertError` with the error decoded."""
        data = self.calldata(name, *args)
        try:
            out = self.rpc.eth_call(self.address, data, sender=sender)
        except RpcError as exc:
            raise self.revert_error(exc) from exc
        return abi_decode(self._functions[name]["outputs"], out)

    def transact(self, wallet: Wallet, name: str, *args: Any) -> dict[str, Any]:
        """Send a transaction; a revert at estimation raises `RevertError`, and nothing is sent."""
        data = self.calldata(name, *args)
        try:
            return self.rpc.transact(wallet, self.address, data)
        except RpcError as exc:
            raise self.revert_error(exc) from exc

    def revert_error(self, exc: RpcError) -> ChainError:
        """The custom error in a node's revert data, or the RPC error itself when there is none."""
        data = exc.data
        if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
            data = data.get("data")
        if not isinstance(data, str) or not data.startswith("0x"):
            return exc
        raw = _unhex(data)
        error = self._errors.get(raw[:4])
        if error is None:
            return RevertError(f"reverted: 0x{raw.hex()}", data=raw, name=None, args=())
        args = abi_decode(error["inputs"], raw[4:])
        shown = ", ".join("0x" + a.hex() if isinstance(a, bytes) else str(a) for a in args)
        return RevertError(
            f"reverted: {error['name']}({shown})", data=raw, name=error["name"], args=args
        )

    @classmethod
    def deploy(
        cls, rpc: RpcClient, wallet: Wallet, artifact: Artifact, *args: Any
    ) -> tuple[Contract, dict[str, Any]]:
        constructor = next((e for e in artifact.abi if e.get("type") == "constructor"), None)
        inputs: Sequence[AbiParam] = constructor["inputs"] if constructor else []  # type: ignore[assignment]
        data = artifact.bytecode + abi_encode(inputs, args)
        try:
            receipt = rpc.transact(wallet, None, data)
        except RpcError as exc:  # the constructor's own errors, decoded from the ABI
            raise cls(rpc, bytes(20), artifact.abi).revert_error(exc) from exc
        contract = cls(rpc, _unhex(receipt["contractAddress"]), artifact.abi)
        contract.deploy_receipt = receipt
        return contract, receipt


def gas_used(receipt: Mapping[str, Any]) -> int:
    return _quantity(receipt["gasUsed"])


# --- anvil ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Anvil:
    """Foundry's anvil (pinned npm package) on 127.0.0.1 and a free port; `close()` stops it."""

    def __init__(self, *, chain_id: int = 31337, start_timeout: float = 30.0) -> None:
        self.chain_id = chain_id
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [
                str(node_tool("anvil")),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--chain-id",
                str(chain_id),
                # No prefunded well-known accounts are needed: keys are funded explicitly.
                "--accounts",
                "0",
                "--silent",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.rpc = RpcClient(self.url, timeout=10.0)
        deadline = time.monotonic() + start_timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise ChainError(f"anvil exited {self._proc.returncode}: {err[-1000:]}")
            try:
                if self.rpc.chain_id() == chain_id:
                    break
            except RpcError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise ChainError(f"anvil did not answer on {self.url} in {start_timeout} s")
            time.sleep(0.05)

    def fund(self, address: bytes, wei: int = 10**21) -> None:
        """anvil_setBalance: give a test key ether (1000 by default)."""
        self.rpc.call("anvil_setBalance", _hex(address), hex(wei))

    def set_next_timestamp(self, when: int) -> None:
        self.rpc.call("evm_setNextBlockTimestamp", hex(when))

    def mine(self, when: int | None = None) -> None:
        """Mine one block (at `when` if given): eth_call on "pending" then sees that time + 1."""
        if when is not None:
            self.set_next_timestamp(when)
        self.rpc.call("evm_mine")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
