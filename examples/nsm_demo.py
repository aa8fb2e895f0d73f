"""`make demo-nsm`: the NSM emulator end to end (`python examples/nsm_demo.py`).

Starts the NSM emulator on a Unix socket, talks to it through the client exactly as an enclave
app would, asks for an attestation document bound to a fresh nonce, then decodes the document
and prints a human summary: module id, PCRs, the certificate chain with validity, and whether
the document verifies against the emulator's root (pinned explicitly: no default verifier
trusts it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from nsm._server import EmulatorServer, write_root_pem
from nsm.client import Nsm
from nsm.emulator import Emulator

__all__ = ["main"]


def _summary(document: bytes, root_pem: bytes, nonce: bytes) -> list[str]:
    # An example, outside the packages: `nsm` itself uses attestation only for the emulator's
    # documents (the layer rule in pyproject.toml), the demo may use both.
    from attestation import AttestationDocument, Policy, Verifier, load_pem_roots

    parsed = AttestationDocument.parse(document)  # structure only: nothing verified yet
    lines = [
        f"document      {len(document)} bytes, COSE_Sign1, protected header "
        f"{parsed.protected.hex()} (ES384)",
        f"module id     {parsed.module_id}",
        f"timestamp     {datetime.fromtimestamp(parsed.timestamp_ms / 1000, UTC).isoformat()}",
        f"digest        {parsed.digest}",
        f"nonce         {parsed.nonce.hex() if parsed.nonce else None}",
        "PCRs",
    ]
    for index, value in sorted(parsed.pcrs.items()):
        lines.append(f"  {index:>2}  {value.hex()}")
    lines.append("certificate chain (root first, leaf last)")
    for der in [*parsed.cabundle, parsed.certificate]:
        cert = x509.load_der_x509_certificate(der)
        lines.append(f"  {cert.subject.rfc4514_string()}")
        lines.append(
            f"      valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} -> "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    verified = Verifier(roots=load_pem_roots(root_pem)).verify(
        document,
        policy=Policy(pcrs={i: parsed.pcrs[i] for i in (0, 1, 2, 16)}, nonce=nonce),
        at=datetime.now(UTC),
    )
    lines.append(
        f"verified      yes: ES384 signature, chain of {len(verified.certificates)} to the "
        "pinned emulator root, PCR0/1/2/16 and nonce"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python examples/nsm_demo.py", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="deterministic emulator PKI")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nsm-demo-") as tmp:
        socket_path = Path(tmp) / "nsm.sock"
        root_path = Path(tmp) / "root.pem"
        emulator = Emulator(seed=args.seed)
        write_root_pem(root_path, emulator.root_pem)
        server = EmulatorServer(socket_path, emulator)
        server.serve_in_thread()
        try:
            print(f"NSM emulator on unix:{socket_path}\n")
            with Nsm.emulator(socket_path) as module:
                description = module.describe()
                print(
                    f"DescribeNSM   version {description.version_major}."
                    f"{description.version_minor}.{description.version_patch}, "
                    f"{description.max_pcrs} PCRs ({description.digest.value}), "
                    f"locked {min(description.locked_pcrs)}-{max(description.locked_pcrs)}"
                )
                pcr16 = module.extend_pcr(16, b"nsm-attestation demo configuration")
                module.lock_pcr(16)
                print(f"ExtendPCR 16  {pcr16.hex()[:32]}... then LockPCR 16")
                nonce = module.get_random(32)
                print(f"GetRandom     nonce {nonce.hex()}")
                document = module.attestation(nonce=nonce)
            print("Attestation\n")
            for line in _summary(document, root_path.read_bytes(), nonce):
                print(line)
        finally:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
