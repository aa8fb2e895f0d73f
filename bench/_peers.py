"""Peer verifiers, run in their own venv under libfaketime (started by `bench/_common.py`).

    python bench/_peers.py verdicts JOBS.json   # one outcome per case and peer
    python bench/_peers.py bench JOBS.json      # timings, interleaved with the crypto floor

Each job: document hex, verification time (Unix seconds), root PEM path, policy (corpus form).
The worker sets `FAKETIME` to the job's time (whole seconds, clock stopped) before each call, so
peers that read the wall clock see the document's time. Output: one JSON object on stdout.

Adapters (what each peer's public API can express, nothing more):

- `evervault`: `evervault_attestation_bindings.attest_enclave(cert, [PCRs], doc)`. It always
  binds the document to a TLS certificate (`user_data` must equal that certificate's SPKI) after
  checking structure, chain (AWS root compiled in) and COSE signature, and it checks PCRs only
  after that binding, so through this API a document can at best reach the binding step. We pass
  the AWS root certificate as the "TLS certificate": a document is *accepted* when the only
  failure is the binding (`MissingUserData`, or `InvalidPublicKey` for a document whose
  structure passes: the same message is also its public_key length rule, so such a document is
  re-run at 2100-01-01, where a structurally valid one fails on the chain instead).
- `epsilon`: `epsilon_verifier.verify_attestation(b64, expected_pcr0/1/2, aws_root_cert_path)`
  with the case's root and PCR0-2; it has no nonce, user_data, public_key, freshness or debug
  parameters and returns `valid` plus an error string (it never raises).
- `pycose`: COSE only. `Sign1Message.decode` (tag 18 added when absent, pycose requires it),
  key from the payload's `certificate`, `verify_signature()`; chain and policy are not its job.
"""

from __future__ import annotations

import base64
import importlib
import itertools
import json
import os
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# `bench/` is not a package; this module runs inside the peers' venv, where `attestation` is
# not installed, and mypy in the main venv cannot see the peers: import them dynamically.


def _set_clock(unix_seconds: float) -> str:
    stamp = datetime.fromtimestamp(int(unix_seconds), UTC).strftime("%Y-%m-%d %H:%M:%S")
    os.environ["FAKETIME"] = stamp
    return stamp


def _root_der(pem_path: str) -> bytes:
    x509 = importlib.import_module("cryptography.x509")
    serialization = importlib.import_module("cryptography.hazmat.primitives.serialization")
    cert = x509.load_pem_x509_certificate(Path(pem_path).read_bytes())
    der: bytes = cert.public_bytes(serialization.Encoding.DER)
    return der


class Evervault:
    name = "evervault"

    def __init__(self) -> None:
        self.mod: Any = importlib.import_module("evervault_attestation_bindings")
        self.version = _version("evervault_attestation_bindings")
        self.aws_root_der = _root_der(
            str(Path(__file__).resolve().parents[1] / "vectors/real/aws_nitro_root_g1.pem")
        )

    def applicable(self, job: dict[str, Any]) -> str | None:
        if _root_der(job["roots_pem"]) != self.aws_root_der:
            return "pins the AWS root (compiled in): cannot run synthetic-root cases"
        return None

    def call(self, data: bytes) -> str | None:
        try:
            self.mod.attest_enclave(self.aws_root_der, [], data)
        except ValueError as exc:
            return str(exc)
        return None

    def verdict(self, job: dict[str, Any], data: bytes) -> dict[str, Any]:
        error = self.call(data)
        if error is None:  # impossible unless user_data is the AWS root's SPKI
            return {"accepted": True, "error": None}
        binding = "User data was not set" in error
        if "public key length in the attestation doc was invalid" in error:
            _set_clock(4102444800)  # 2100-01-01: a structurally valid document fails the chain
            probe = self.call(data) or ""
            _set_clock(job["at"])
            binding = "trust chain" in probe
        if binding:
            return {"accepted": True, "error": None, "note": f"stopped at TLS binding: {error}"}
        return {"accepted": False, "error": error}

    def timed(self, data: bytes) -> None:
        self.call(data)


class Epsilon:
    name = "epsilon"

    def __init__(self) -> None:
        self.mod: Any = importlib.import_module("epsilon_verifier")
        self.version = _version("epsilon-attestation-verifier")
        # It logs every step at INFO and tracebacks at ERROR; keep its output off stderr.
        import logging

        logging.getLogger("epsilon_verifier").setLevel(logging.CRITICAL)

    def applicable(self, job: dict[str, Any]) -> str | None:
        if isinstance(job["policy"]["pcrs"], list):
            return "takes one expected PCR0/1/2, not alternative PCR sets"
        return None

    def run(self, job: dict[str, Any], b64: str) -> Any:
        pcrs = job["policy"]["pcrs"]
        return self.mod.verify_attestation(
            b64,
            expected_pcr0=pcrs.get("0"),
            expected_pcr1=pcrs.get("1"),
            expected_pcr2=pcrs.get("2"),
            aws_root_cert_path=job["roots_pem"],
        )

    def verdict(self, job: dict[str, Any], data: bytes) -> dict[str, Any]:
        result = self.run(job, base64.b64encode(data).decode())
        out: dict[str, Any] = {"accepted": bool(result.valid), "error": result.error}
        if result.error and str(result.error).startswith("Verification error:"):
            out["note"] = "unexpected exception caught by its catch-all"
        return out


class Pycose:
    name = "pycose"

    def __init__(self) -> None:
        self.sign1: Any = importlib.import_module("pycose.messages").Sign1Message
        keys = importlib.import_module("pycose.keys")
        self.ec2key: Any = keys.EC2Key
        self.curves: Any = importlib.import_module("pycose.keys.curves")
        self.cbor2: Any = importlib.import_module("cbor2")
        self.x509: Any = importlib.import_module("cryptography.x509")
        self.version = _version("pycose")

    def applicable(self, job: dict[str, Any]) -> str | None:
        return None

    def verdict(self, job: dict[str, Any], data: bytes) -> dict[str, Any]:
        try:
            tagged = data if data[:1] == b"\xd2" else b"\xd2" + data
            message = self.sign1.decode(tagged)
            payload = self.cbor2.loads(message.payload)
            cert = self.x509.load_der_x509_certificate(bytes(payload["certificate"]))
            numbers = cert.public_key().public_numbers()
            size = (numbers.curve.key_size + 7) // 8
            curve = {
                "secp256r1": self.curves.P256,
                "secp384r1": self.curves.P384,
                "secp521r1": self.curves.P521,
            }[numbers.curve.name]
            message.key = self.ec2key(
                crv=curve, x=numbers.x.to_bytes(size, "big"), y=numbers.y.to_bytes(size, "big")
            )
            ok = bool(message.verify_signature())
        except Exception as exc:
            return {"accepted": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"accepted": ok, "error": None if ok else "signature does not verify"}

    def timed(self, data: bytes) -> None:
        if not self.verdict({}, data)["accepted"]:
            raise SystemExit("pycose rejected a genuine document")


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _load_peers(names: list[str]) -> tuple[list[Any], dict[str, str]]:
    peers: list[Any] = []
    failed: dict[str, str] = {}
    for name in names:
        cls = {"evervault": Evervault, "epsilon": Epsilon, "pycose": Pycose}[name]
        try:
            peers.append(cls())
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    return peers, failed


def verdicts(spec: dict[str, Any]) -> dict[str, Any]:
    peers, failed = _load_peers(spec["options"]["peers"])
    results: dict[str, dict[str, Any]] = {p.name: {} for p in peers}
    for job in spec["jobs"]:
        data = bytes.fromhex(job["data"])
        clock = _set_clock(job["at"])
        for peer in peers:
            reason = peer.applicable(job)
            if reason is not None:
                results[peer.name][job["id"]] = {"accepted": None, "error": reason}
                continue
            try:
                outcome = peer.verdict(job, data)
            except BaseException as exc:
                outcome = {
                    "accepted": False,
                    "error": f"CRASH {type(exc).__name__}: {exc}",
                    "crash": traceback.format_exc(limit=3),
                }
            outcome["faketime"] = clock
            results[peer.name][job["id"]] = outcome
    return {
        "versions": {p.name: p.version for p in peers},
        "failed": failed,
        "results": results,
    }


def _floor_items(data: bytes) -> list[tuple[Any, bytes, bytes, Any]]:
    """The five P-384 verifications of one document, keys and DER signatures pre-built."""
    cbor2: Any = importlib.import_module("cbor2")
    x509: Any = importlib.import_module("cryptography.x509")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    utils: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.utils")
    protected, _unprotected, payload, signature = cbor2.loads(data)
    fields = cbor2.loads(payload)
    chain = [
        x509.load_der_x509_certificate(bytes(der))
        for der in (fields["certificate"], *reversed(fields["cabundle"]))
    ]
    items = [
        (
            parent.public_key(),
            child.signature,
            child.tbs_certificate_bytes,
            ec.ECDSA(hashes.SHA384()),
        )
        for child, parent in itertools.pairwise(chain)
    ]
    head = (
        b"\x59" + len(payload).to_bytes(2, "big")
        if len(payload) > 255
        else bytes([0x58, len(payload)])
    )
    to_sign = b"\x84\x6aSignature1\x44" + protected + b"\x40" + head + payload
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    )
    cose = (chain[0].public_key(), der, to_sign, ec.ECDSA(hashes.SHA384()))
    cose[0].verify(cose[1], cose[2], cose[3])  # the floor must be real verifications
    return [cose, *items]


def bench(spec: dict[str, Any]) -> dict[str, Any]:
    options = spec["options"]
    peers, failed = _load_peers(options["peers"])
    jobs = spec["jobs"]
    docs = [bytes.fromhex(job["data"]) for job in jobs]
    b64 = [base64.b64encode(d).decode() for d in docs]
    floors = [_floor_items(d) for d in docs]
    times: dict[str, list[float]] = {}
    for peer in peers:
        times[peer.name] = []
        times[f"{peer.name}:floor5"] = []
        times[f"{peer.name}:floor1"] = []

    def run_floor(count: int) -> float:
        start = time.perf_counter()
        for items in floors:
            for key, sig, msg, alg in items[:count]:
                key.verify(sig, msg, alg)
        return time.perf_counter() - start

    for round_ in range(options["rounds"]):
        order = peers if round_ % 2 == 0 else list(reversed(peers))
        for peer in order:
            total = 0.0
            for job, data, text in zip(jobs, docs, b64, strict=True):
                _set_clock(job["at"])
                if peer.name == "epsilon":
                    start = time.perf_counter()
                    result = peer.run(job, text)
                    total += time.perf_counter() - start
                    if not result.valid:
                        raise SystemExit(f"epsilon rejected {job['id']}: {result.error}")
                else:
                    start = time.perf_counter()
                    peer.timed(data)
                    total += time.perf_counter() - start
            times[peer.name].append(total)
            times[f"{peer.name}:floor5"].append(run_floor(5))
            times[f"{peer.name}:floor1"].append(run_floor(1))
    return {
        "versions": {p.name: p.version for p in peers},
        "failed": failed,
        "documents": len(docs),
        "times": times,
        "median": {k: statistics.median(v) for k, v in times.items() if v},
    }


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(path).read_text())
    answer = verdicts(spec) if mode == "verdicts" else bench(spec)
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
