"""`nitro-attest`: inspect and verify Nitro Enclave attestation documents.

Exit status: 0 verified (or inspected), 1 the document was refused (the error code is printed),
2 usage error (bad arguments, unreadable file).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from attestation import __version__
from attestation.document import AttestationDocument, VerifiedDocument
from attestation.errors import AttestationError
from attestation.policy import Policy, UnsafeNoPcrCheck
from attestation.roots import load_pem_roots
from attestation.service._cli import add_serve_parser
from attestation.verifier import Verifier

__all__ = ["main"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_HEX = re.compile(rb"^[0-9a-fA-F]+$")
_NOT_VERIFIED = "NOT VERIFIED: inspect only decodes the document; nothing here is authenticated."


class _UsageError(Exception):
    pass


def _duration(text: str) -> _dt.timedelta | None:
    if text.lower() == "none":
        return None
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30s, 5m, 2h, none)")
    return _dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _instant(text: str) -> _dt.datetime:
    try:
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad ISO 8601 time {text!r}") from exc
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"time {text!r} needs a timezone (e.g. Z)")
    return value


def _pcr(text: str) -> tuple[int, bytes]:
    index, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        pcr = int(index)
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad PCR {text!r}, expected INDEX=HEX") from exc
    if not 0 <= pcr <= 31 or len(raw) not in (32, 48, 64):
        raise argparse.ArgumentTypeError(f"bad PCR {text!r}: index 0..31, 32/48/64 bytes")
    return pcr, raw


def _hex_arg(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from exc


def _read_input(name: str) -> bytes:
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    return _decode_input(data)


def _decode_input(data: bytes) -> bytes:
    """Raw CBOR as is; otherwise hex, then base64 (standard or URL-safe) text."""
    if data[:1] in (b"\x84", b"\x9f", b"\xd2"):
        return data
    text = b"".join(data.split())
    if text and len(text) % 2 == 0 and _HEX.match(text):
        return bytes.fromhex(text.decode("ascii"))
    # URL-safe base64 is mapped onto the standard alphabet so that validation stays strict.
    padded = text.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return data


def _cert_rows(certs: Sequence[x509.Certificate]) -> list[dict[str, str]]:
    return [
        {
            "subject": c.subject.rfc4514_string(),
            "not_before": c.not_valid_before_utc.isoformat(),
            "not_after": c.not_valid_after_utc.isoformat(),
        }
        for c in certs
    ]


def _load_certs(ders: Sequence[bytes]) -> list[x509.Certificate] | str:
    try:
        return [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        return f"unparseable certificate: {exc}"


def _opt_hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _inspect(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    try:
        doc = AttestationDocument.parse(data)
    except AttestationError as exc:
        return _refused(args, exc)
    certs = _load_certs([doc.certificate, *reversed(doc.cabundle)])
    info: dict[str, Any] = {
        "verified": False,
        "warning": _NOT_VERIFIED,
        "kind": doc.kind,
        "module_id": doc.module_id,
        "timestamp": doc.timestamp.isoformat(),
        "digest": doc.digest,
        "debug": doc.is_debug,
        "tagged": doc.tagged,
        "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
        "public_key": _opt_hex(doc.public_key),
        "user_data": _opt_hex(doc.user_data),
        "nonce": _opt_hex(doc.nonce),
        "certificates": certs if isinstance(certs, str) else _cert_rows(certs),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(_NOT_VERIFIED)
    for key in ("kind", "module_id", "timestamp", "digest", "debug", "tagged"):
        print(f"{key:12} {info[key]}")
    print("pcrs")
    for index, value in info["pcrs"].items():
        print(f"  {int(index):2d}  {value}")
    for key in ("public_key", "user_data", "nonce"):
        value = info[key]
        print(f"{key:12} {'null' if value is None else f'{len(value) // 2} bytes: {value}'}")
    print("certificates (leaf first, as carried; cabundle[0] last)")
    if isinstance(certs, str):
        print(f"  {certs}")
    else:
        for row in info["certificates"]:
            print(f"  {row['subject']}\n    valid {row['not_before']} .. {row['not_after']}")
    return EXIT_OK


def _refused(args: argparse.Namespace, exc: AttestationError) -> int:
    if args.json:
        print(json.dumps({"verified": False, "code": exc.code, "error": exc.reason}, indent=2))
    else:
        print(f"REFUSED {exc.code}: {exc.reason}", file=sys.stderr)
    return EXIT_REFUSED


def _verified_json(doc: VerifiedDocument) -> dict[str, Any]:
    return {
        "verified": True,
        "module_id": doc.module_id,
        "timestamp": doc.timestamp.isoformat(),
        "digest": doc.digest,
        "debug": doc.is_debug,
        "pcrs": {str(i): v.hex() for i, v in sorted(doc.pcrs.items())},
        "public_key": _opt_hex(doc.public_key),
        "user_data": _opt_hex(doc.user_data),
        "nonce": _opt_hex(doc.nonce),
        "certificates": _cert_rows(doc.certificates),
    }


def _verify(args: argparse.Namespace) -> int:
    if not args.pcr and not args.unsafe_no_pcr_check:
        raise _UsageError("give at least one --pcr INDEX=HEX (or --unsafe-no-pcr-check)")
    if args.pcr and args.unsafe_no_pcr_check:
        raise _UsageError("--pcr and --unsafe-no-pcr-check exclude each other")
    pcrs = dict(args.pcr)
    if len(pcrs) != len(args.pcr):
        raise _UsageError("a PCR index is given twice")
    if args.root:
        try:
            roots = load_pem_roots(Path(args.root).read_bytes())
        except OSError as exc:
            raise _UsageError(f"cannot read {args.root}: {exc.strerror or exc}") from exc
        except AttestationError as exc:
            raise _UsageError(f"--root: {exc.reason}") from exc
        verifier = Verifier(roots=roots)
    else:
        verifier = Verifier.aws()
    data = _read_input(args.file)
    policy = Policy(
        pcrs=UnsafeNoPcrCheck() if args.unsafe_no_pcr_check else pcrs,
        nonce=args.nonce,
        max_age=args.max_age,
        allow_debug=args.allow_debug,
    )
    try:
        doc = verifier.verify(data, policy=policy, at=args.at)
    except AttestationError as exc:
        return _refused(args, exc)
    if args.json:
        print(json.dumps(_verified_json(doc), indent=2))
    else:
        print(f"VERIFIED {doc.module_id} at {doc.timestamp.isoformat()}")
        if doc.is_debug:
            print("WARNING: debug-mode document (PCR0 all zero), accepted by --allow-debug")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nitro-attest",
        description="Inspect and verify AWS Nitro Enclave attestation documents.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="decode a document WITHOUT verifying it")
    inspect.add_argument("file", help="document file (raw CBOR, hex or base64), or - for stdin")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(handler=_inspect)

    verify = sub.add_parser("verify", help="verify chain, signature and policy")
    verify.add_argument("file", help="document file (raw CBOR, hex or base64), or - for stdin")
    verify.add_argument(
        "--pcr",
        action="append",
        type=_pcr,
        default=[],
        metavar="INDEX=HEX",
        help="expected PCR value (repeatable)",
    )
    verify.add_argument(
        "--unsafe-no-pcr-check",
        action="store_true",
        help="accept any PCR values (attests nothing about the enclave code)",
    )
    verify.add_argument("--nonce", type=_hex_arg, help="expected nonce (hex)")
    verify.add_argument(
        "--at",
        type=_instant,
        default=None,
        help="verification time, ISO 8601 with timezone (default: now)",
    )
    verify.add_argument(
        "--max-age",
        type=_duration,
        default=_dt.timedelta(minutes=5),
        help="maximum document age, e.g. 30s, 5m, 2h, or none (default 5m)",
    )
    verify.add_argument("--root", help="PEM file of trust roots instead of the pinned AWS root")
    verify.add_argument(
        "--allow-debug", action="store_true", help="accept debug-mode documents (PCR0 zero)"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(handler=_verify)

    add_serve_parser(sub)  # the HTTP verifier service; Starlette is imported only when it runs
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors by exiting with 2
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        result: int = args.handler(args)
    except _UsageError as exc:
        print(f"nitro-attest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
