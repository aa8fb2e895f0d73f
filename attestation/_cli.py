"""`nitro-attest`: inspect and verify Nitro Enclave attestation documents.

Exit status: 0 verified (or inspected), 1 the document was refused (the error code is printed),
2 usage error (bad arguments, unreadable file). With `--json`, results and errors are JSON on
stdout in the shapes of docs/schemas/.
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
from attestation._chain import load_certificate
from attestation._output import certificate_json, hex_or_none, iso_time
from attestation.document import AttestationDocument
from attestation.errors import AttestationError, MalformedDocument
from attestation.policy import NitroTpmPolicy, Policy, UnsafeNoPcrCheck, VerificationPolicy
from attestation.roots import load_pem_roots
from attestation.service._cli import add_serve_parser
from attestation.verifier import Verifier
from nsm_attestation_cli import (
    EXIT_USAGE,
    CliParser,
    UsageError,
    dump,
    epilog_everywhere,
    error_json,
    report_usage_error,
    stdout_closed,
    wants_json,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_REFUSED = 1
_EXIT_CODES = """\
exit status:
  0    verified (verify), decoded (inspect)
  1    the document was refused: the error code names the rule (see --json)
  2    usage error: bad arguments, unreadable file
  141  stdout closed early (e.g. | head)
"""
_SERVE_EXIT_CODES = """\
exit status:
  0    stopped (or --check: the config is valid)
  2    usage error, config error, or the service extra is missing
"""

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_HEX = re.compile(rb"^[0-9a-fA-F]+$")
_NOT_VERIFIED = "NOT VERIFIED: inspect only decodes the document; nothing here is authenticated."


_NOT_A_DOCUMENT = "not an attestation document (expected raw CBOR, hex or base64)"
# Hints by error code, in terms of this command's flags (the library's name its Python API).
_HINTS = {
    "policy.debug": "pass --allow-debug to accept a debug-mode enclave (development only)",
    "chain.not-yet-valid": "check this machine's clock, or verify at another time with --at",
    "chain.untrusted": "documents from the NSM emulator are signed by its own root: pass "
    "--root root.pem (written by `nsm emulator serve --root-out`)",
    "policy.stale": "ask the enclave for a fresh document, or widen --max-age (e.g. 1h, none)",
    "policy.future": "check this machine's clock, or verify at another time with --at",
    "policy.pcr-mismatch": "compare with `nitro-attest inspect`; pin the values that "
    "`nitro-cli describe-eif` prints with --pcrs-from FILE",
    "policy.nonce-mismatch": "--nonce must be the nonce the enclave was asked to include",
    "policy.user-data-mismatch": "--user-data must equal the document's user_data",
    "policy.public-key-mismatch": "--public-key must equal the document's public_key",
    "policy.module-id-mismatch": "--module-id must equal the document's module_id",
    "document.encoding": "give the document as the NSM returned it: raw CBOR, or its hex or "
    "base64 text",
}


def _hint(exc: AttestationError, data: bytes | None) -> str | None:
    if exc.code == "chain.expired" and data is not None:
        # A stored or sample document is judged at its own time: name that time.
        try:
            stamp = iso_time(AttestationDocument.parse(data).timestamp)
        except AttestationError:
            return None
        return f"a stored or sample document verifies at its own time: --at {stamp}"
    if exc.code.startswith(("cbor.", "envelope.")):
        return _HINTS["document.encoding"]
    return _HINTS.get(exc.code)


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
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    return _decode_input(data)


def _decode_input(data: bytes) -> bytes:
    """Raw CBOR as is; otherwise hex, then base64 (standard or URL-safe) text.

    Anything else is refused here with `document.encoding`: parsing it as CBOR would only
    report some CBOR detail about bytes that were never meant to be a document.
    """
    # An envelope array, or a tag (18, in any head form) around it.
    if data[:1] in (b"\x84", b"\x9f", b"\xd2", b"\xd8", b"\xd9", b"\xda", b"\xdb"):
        return data
    text = b"".join(data.split())
    if text and len(text) % 2 == 0 and _HEX.match(text):
        return bytes.fromhex(text.decode("ascii"))
    # URL-safe base64 is mapped onto the standard alphabet so that validation stays strict.
    padded = text.translate(bytes.maketrans(b"-_", b"+/")) + b"=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded[:1] in (b"\x84", b"\x9f", b"\xd2"):
        return decoded
    raise MalformedDocument(_NOT_A_DOCUMENT, code="document.encoding")


def _cert_rows(certs: Sequence[x509.Certificate]) -> list[dict[str, str]]:
    return [certificate_json(c) for c in certs]


def _load_certs(ders: Sequence[bytes]) -> list[x509.Certificate] | str:
    try:
        return [load_certificate(d, "certificate") for d in ders]
    except AttestationError as exc:
        return f"unparseable {exc.reason}"


_opt_hex = hex_or_none


def _inspect(args: argparse.Namespace) -> int:
    data = None
    try:
        data = _read_input(args.file)
        doc = AttestationDocument.parse(data)
    except AttestationError as exc:
        return _refused(args, exc, data)
    certs = _load_certs([doc.certificate, *reversed(doc.cabundle)])
    info: dict[str, Any] = {
        "verified": False,
        "warning": _NOT_VERIFIED,
        "kind": doc.kind,
        "module_id": doc.module_id,
        "timestamp": iso_time(doc.timestamp),
        "timestamp_ms": doc.timestamp_ms,
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
        print(dump(info))
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


def _refused(args: argparse.Namespace, exc: AttestationError, data: bytes | None) -> int:
    hint = _hint(exc, data)
    if args.json:
        print(dump(error_json(exc.code, exc.reason, hint, verified=False)))
    else:
        print(f"REFUSED {exc.code}: {exc.reason}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
    return EXIT_REFUSED


def _pcrs_from(name: str) -> dict[int, bytes]:
    """The PCRs of `nitro-cli build-enclave` / `describe-eif` output: `{"Measurements":
    {"HashAlgorithm": "Sha384 { ... }", "PCR0": hex, ...}}`, or the inner object alone."""
    try:
        value = json.loads(Path(name).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--pcrs-from {name}: not JSON ({exc})") from exc
    if isinstance(value, dict) and isinstance(value.get("Measurements"), dict):
        value = value["Measurements"]
    if not isinstance(value, dict):
        raise UsageError(f"--pcrs-from {name}: expected nitro-cli's Measurements object")
    algorithm = value.get("HashAlgorithm", "Sha384")
    if not isinstance(algorithm, str) or not algorithm.startswith("Sha384"):
        raise UsageError(f"--pcrs-from {name}: HashAlgorithm {algorithm!r} is not Sha384")
    pcrs: dict[int, bytes] = {}
    for key, hex_value in value.items():
        match = re.fullmatch(r"PCR([0-9]|[12][0-9]|3[01])", key)
        if match is None:
            continue
        if not isinstance(hex_value, str):
            raise UsageError(f"--pcrs-from {name}: {key} is not a hex string")
        pcrs[int(match.group(1))] = _pcr(f"{match.group(1)}={hex_value}")[1]
    if not pcrs:
        raise UsageError(f"--pcrs-from {name}: no PCR0..PCR31 entries")
    return pcrs


def _verify(args: argparse.Namespace) -> int:
    pinned = args.pcr or args.pcrs_from
    if not pinned and not args.unsafe_no_pcr_check:
        raise UsageError(
            "give at least one --pcr INDEX=HEX or --pcrs-from FILE (or --unsafe-no-pcr-check)"
        )
    if pinned and args.unsafe_no_pcr_check:
        raise UsageError("--pcr/--pcrs-from and --unsafe-no-pcr-check exclude each other")
    pcrs = _pcrs_from(args.pcrs_from) if args.pcrs_from else {}
    for index, value in args.pcr:
        if index in pcrs:
            raise UsageError(f"PCR{index} is given twice")
        pcrs[index] = value
    if args.root:
        try:
            roots = load_pem_roots(Path(args.root).read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {args.root}: {exc.strerror or exc}") from exc
        except AttestationError as exc:
            raise UsageError(f"--root: {exc.reason}") from exc
        verifier = Verifier(roots=roots)
    else:
        verifier = Verifier.aws()
    expected = UnsafeNoPcrCheck() if args.unsafe_no_pcr_check else pcrs
    rules = {
        "nonce": args.nonce,
        "max_age": args.max_age,
        "user_data": args.user_data,
        "public_key": args.public_key,
        "module_id": args.module_id,
    }
    policy: VerificationPolicy
    if args.kind == "nitrotpm":
        if args.allow_debug:
            raise UsageError("--allow-debug is for enclave documents, not --kind nitrotpm")
        try:
            policy = NitroTpmPolicy(pcrs=expected, **rules)
        except ValueError as exc:  # a register index past 23
            raise UsageError(f"--pcr: {exc}") from exc
    else:
        policy = Policy(pcrs=expected, allow_debug=args.allow_debug, **rules)
    data = None
    try:
        data = _read_input(args.file)
        doc = verifier.verify(data, policy=policy, at=args.at, kind=args.kind)
    except AttestationError as exc:
        return _refused(args, exc, data)
    if args.json:
        print(doc.to_json())
    else:
        print(f"VERIFIED {doc.module_id} at {iso_time(doc.timestamp)}")
        if doc.is_debug:
            print("WARNING: debug-mode document (PCR0 all zero), accepted by --allow-debug")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = CliParser(
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
        help="expected PCR value (repeatable); with --kind nitrotpm a nitrotpm_pcrs register 0..23",
    )
    verify.add_argument(
        "--kind",
        choices=("nitro-enclave", "nitrotpm"),
        default="nitro-enclave",
        help="document kind to accept: a Nitro Enclave's (default) or an EC2 instance's NitroTPM",
    )
    verify.add_argument(
        "--unsafe-no-pcr-check",
        action="store_true",
        help="accept any PCR values (attests nothing about the enclave code)",
    )
    verify.add_argument(
        "--pcrs-from",
        metavar="FILE",
        help="expected PCRs from the JSON `nitro-cli build-enclave` or `describe-eif` prints "
        '({"Measurements": {"PCR0": ..., ...}}); --pcr adds to them',
    )
    verify.add_argument("--nonce", type=_hex_arg, help="expected nonce (hex)")
    verify.add_argument("--user-data", type=_hex_arg, help="expected user_data (hex)")
    verify.add_argument("--public-key", type=_hex_arg, help="expected public_key (hex)")
    verify.add_argument("--module-id", help="expected module_id (e.g. i-0123...-enc0123...)")
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
    epilog_everywhere(parser, _EXIT_CODES)
    serve = sub.choices["serve"]
    serve.epilog = _SERVE_EXIT_CODES
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        result: int = args.handler(args)
    except UsageError as exc:
        return report_usage_error(exc, prog="nitro-attest", as_json=wants_json(argv))
    except BrokenPipeError:
        return stdout_closed()
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
