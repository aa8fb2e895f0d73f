"""`enclave-net kms ...`: the command-line equivalents of AWS's kmstool-enclave-cli, plus the
parent-side services they need.

Enclave side (run inside the enclave, NSM from /dev/nsm or NSM_EMULATOR=unix:PATH):
  decrypt    Decrypt with Recipient; prints the plaintext (base64)
  genkey     GenerateDataKey with Recipient; prints the ciphertext blob and the plaintext key
  genrandom  GenerateRandom with Recipient; prints the random bytes
Parent side:
  serve-credentials  the credentials endpoint (botocore's provider chain)
  blob-store         the write-once store for sealed keys
  double             the KMS double (tests and the demo)

`add_kms_commands(subparsers)` registers them all under `kms`; `python -m enclave_net.kms`
runs them on their own. Exit status: 0 done, 1 KMS answered with an error, 3 anything else
(egress, credentials, attestation, a CiphertextForRecipient we refuse), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from enclave_net._output import EXIT_CODES, print_error
from enclave_net.address import parse_address
from enclave_net.egress import EgressConfig, Timeouts
from enclave_net.errors import EgressError
from enclave_net.kms.client import KmsClient, kms_host
from enclave_net.kms.credentials import (
    Credentials,
    CredentialSource,
    ParentCredentials,
    StaticCredentials,
)
from enclave_net.kms.errors import KmsError, KmsServiceError
from enclave_net.kms.recipient import KEY_SIZES, Recipient
from nsm_attestation_cli import dump, epilog_everywhere, stdout_closed

__all__ = ["add_kms_commands", "main"]

#: Where the parent's credentials endpoint listens by default (kmstool's proxy uses 8000).
DEFAULT_CREDENTIALS = "vsock:3:8002"


def _enclave_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", required=True, help="AWS region of the KMS key")
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="HOST:PORT=ADDR",
        help="egress route, e.g. kms.us-east-1.amazonaws.com:443=vsock:3:8000 (default: that "
        "one for --region, like kmstool's --proxy-port 8000)",
    )
    p.add_argument("--connect", metavar="ADDR", help="parent CONNECT proxy instead of a route")
    p.add_argument("--ca-bundle", type=Path, metavar="PEM", help="CAs to trust (default certifi)")
    p.add_argument(
        "--credentials",
        metavar="ADDR",
        help=f"parent credentials endpoint (default {DEFAULT_CREDENTIALS}; with "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set, those are used instead)",
    )
    p.add_argument("--key-size", type=int, choices=sorted(KEY_SIZES), default=2048)
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_kms_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kms {decrypt,genkey,genrandom,serve-credentials,blob-store,double}`."""
    kms = subparsers.add_parser(
        "kms",
        help="KMS with attestation (kmstool-enclave-cli equivalents) and its parent services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = kms.add_subparsers(dest="kms_command", metavar="KMS_COMMAND", required=True)

    p = sub.add_parser("decrypt", help="Decrypt with Recipient (kmstool decrypt)")
    _enclave_options(p)
    p.add_argument("--ciphertext", required=True, help="CiphertextBlob, base64")
    p.add_argument("--key-id", help="expected key (id, ARN or alias)")
    p.add_argument("--encryption-context", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_run_enclave, operation=_decrypt)

    p = sub.add_parser("genkey", help="GenerateDataKey with Recipient (kmstool genkey)")
    _enclave_options(p)
    p.add_argument("--key-id", required=True)
    p.add_argument(
        "--key-spec",
        choices=["AES_256", "AES_128", "AES-256", "AES-128"],  # KMS's and kmstool's spellings
        default="AES_256",
    )
    p.set_defaults(func=_run_enclave, operation=_genkey)

    p = sub.add_parser("genrandom", help="GenerateRandom with Recipient (kmstool genrandom)")
    _enclave_options(p)
    p.add_argument("--length", type=int, required=True, help="bytes, 1..1024")
    p.set_defaults(func=_run_enclave, operation=_genrandom)

    p = sub.add_parser("serve-credentials", help="parent: serve credentials to the enclave")
    p.add_argument("--listen", default="vsock:4294967295:8002", metavar="ADDR")
    p.set_defaults(func=_run_serve_credentials)

    p = sub.add_parser("blob-store", help="parent: write-once store for sealed keys")
    p.add_argument("--listen", required=True, metavar="ADDR")
    p.add_argument("--file", required=True, type=Path)
    p.set_defaults(func=_run_blob_store)

    p = sub.add_parser("double", help="the KMS double: HTTPS on loopback, config from a file")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--cert", required=True, type=Path, help="server certificate (PEM)")
    p.add_argument("--key", required=True, type=Path, help="server key (PEM)")
    p.add_argument("--root", action="append", required=True, type=Path, help="attestation root PEM")
    p.add_argument("--port", type=int, default=0)
    p.set_defaults(func=_run_double)


# --- enclave side ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _context(pairs: list[str]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KmsError(f"--encryption-context {pair!r}: expected KEY=VALUE")
        context[key] = value
    return context


async def _decrypt(kms: KmsClient, args: argparse.Namespace) -> dict[str, str]:
    try:
        blob = base64.b64decode(args.ciphertext, validate=True)
    except binascii.Error:
        raise KmsError("--ciphertext is not base64") from None
    plaintext = await kms.decrypt(
        blob, key_id=args.key_id, encryption_context=_context(args.encryption_context)
    )
    return {"Plaintext": _b64(plaintext)}


async def _genkey(kms: KmsClient, args: argparse.Namespace) -> dict[str, str]:
    key = await kms.generate_data_key(args.key_id, key_spec=args.key_spec.replace("-", "_"))
    return {"CiphertextBlob": _b64(key.ciphertext_blob), "Plaintext": _b64(key.plaintext),
            "KeyId": key.key_id}  # fmt: skip


async def _genrandom(kms: KmsClient, args: argparse.Namespace) -> dict[str, str]:
    return {"Plaintext": _b64(await kms.generate_random(args.length))}


# kmstool-enclave-cli prints "CIPHERTEXT: <base64>" and "PLAINTEXT: <base64>" lines, nothing else.
_TEXT_LABELS = {"CiphertextBlob": "CIPHERTEXT", "Plaintext": "PLAINTEXT"}


def _credentials(args: argparse.Namespace) -> CredentialSource:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if args.credentials is None and key and secret:
        token = os.environ.get("AWS_SESSION_TOKEN")
        return StaticCredentials(Credentials(key, secret, token))
    return ParentCredentials(parse_address(args.credentials or DEFAULT_CREDENTIALS))


def _run_enclave(args: argparse.Namespace) -> int:
    operation: Callable[[KmsClient, argparse.Namespace], Awaitable[dict[str, str]]]
    operation = args.operation
    try:
        from nsm import Nsm

        t = args.timeout
        routes = args.route or (
            [] if args.connect else [f"{kms_host(args.region)}:443=vsock:3:8000"]
        )
        config = EgressConfig.from_strings(
            routes=routes,
            connect=args.connect,
            allow=[f"{kms_host(args.region)}:443"] if args.connect else [],
            ca_bundle=args.ca_bundle,
            timeouts=Timeouts(connect=min(t, 5.0), read=t, write=t, pool=t),
        )
        credentials = _credentials(args)

        async def go() -> dict[str, str]:
            with Nsm.open() as nsm:
                recipient = Recipient(nsm, key_size=args.key_size)
                async with KmsClient.through_egress(
                    config,
                    region=args.region,
                    credentials=credentials,
                    recipient=recipient,
                    total_timeout=t,
                ) as kms:
                    return await operation(kms, args)

        result = asyncio.run(go())
    except (KmsError, EgressError, ValueError) as exc:
        # KMS's own error names (AccessDeniedException...) under `kms.`, as the error shape's
        # codes are dotted lower-case namespaces.
        code = f"kms.{exc.code}" if isinstance(exc, KmsServiceError) else None
        print_error(exc, as_json=args.json, prefix="error", code=code)
        return 1 if isinstance(exc, KmsServiceError) else 3
    except Exception as exc:  # NsmError, OSError: no NSM, no attestation
        print_error(exc, as_json=args.json, prefix=f"error: {type(exc).__name__}")
        return 3
    if args.json:
        print(dump(result))
    else:
        for name, label in _TEXT_LABELS.items():
            if name in result:
                print(f"{label}: {result[name]}")
    return 0


# --- parent side ----------------------------------------------------------------------------


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def _ready(what: str, **details: Any) -> None:
    # One JSON line on stdout, so a supervisor (or a test) knows the service is listening.
    print(json.dumps({"ready": what, **details}), flush=True)


def _run_serve_credentials(args: argparse.Namespace) -> int:
    from enclave_net.kms.credentials import CredentialsServer, botocore_chain

    with CredentialsServer(parse_address(args.listen), botocore_chain()):
        _ready("credentials", listen=args.listen)
        _wait_for_signal()
    return 0


def _run_blob_store(args: argparse.Namespace) -> int:
    from enclave_net.kms.seal import BlobServer, FileStore

    with BlobServer(parse_address(args.listen), FileStore(args.file)):
        _ready("blob-store", listen=args.listen)
        _wait_for_signal()
    return 0


def _run_double(args: argparse.Namespace) -> int:
    from attestation import load_pem_roots
    from enclave_net.kms.double import DoubleConfig, KmsDouble

    roots = [root for path in args.root for root in load_pem_roots(path.read_bytes())]
    config = DoubleConfig.load(args.config)
    with KmsDouble(
        config, cert_file=args.cert, key_file=args.key, roots=roots, port=args.port
    ) as double:
        _ready("kms-double", host=double.host, port=double.port)
        _wait_for_signal()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m enclave_net.kms COMMAND ...` (the same commands as `enclave-net kms`)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="enclave-net")  # the console script it joins
    add_kms_commands(parser.add_subparsers(dest="command", required=True))
    epilog_everywhere(parser, EXIT_CODES)
    args = parser.parse_args(["kms", *(sys.argv[1:] if argv is None else argv)])
    try:
        result: int = args.func(args)
    except (KmsError, EgressError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        return stdout_closed()
    return result


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
