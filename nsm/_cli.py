"""`nsm`: talk to the Nitro Secure Module, or run its emulator.

Exit status: 0 on success, 1 when the module or its transport fails, 2 for usage errors
(including arguments the module itself refuses, and output files that cannot be written).
With `--json`, results and errors are JSON on stdout (docs/schemas/nsm.schema.json, error).
"""

from __future__ import annotations

import argparse
import base64
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from nsm import __version__
from nsm._transport import emulator_address
from nsm.client import ATTESTATION_FIELD_MAX, Nsm
from nsm.errors import (
    ArgumentError,
    DeviceNotFound,
    ModuleError,
    NsmError,
    ProtocolError,
    TransportError,
)
from nsm.models import ErrorCode

# The output contract every command shares (standard library only, no attestation).
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

if TYPE_CHECKING:
    from nsm.emulator import Emulator

__all__ = ["emulator_from_args", "main"]

_EPILOG = """\
Selecting the module: inside an enclave the default is /dev/nsm. Off-enclave, start the
emulator (`nsm emulator serve --socket /tmp/nsm.sock --root-out root.pem`) and select it
explicitly with --emulator unix:/tmp/nsm.sock or NSM_EMULATOR=unix:/tmp/nsm.sock.
A missing /dev/nsm never falls back to the emulator.
"""
_EXIT_CODES = """\
exit status:
  0    done
  1    the module or its transport failed (no /dev/nsm, emulator gone, locked PCR...)
  2    usage error: bad arguments, arguments the module refused (InvalidIndex,
       InvalidArgument, InputTooLarge), a file or socket path that cannot be written
  141  stdout closed early (e.g. | head)
"""
_EXIT_FAILED = 1
# What the module says about the arguments themselves: the caller's mistake, as a usage error.
_ARGUMENT_CODES = frozenset(
    {ErrorCode.INVALID_INDEX, ErrorCode.INVALID_ARGUMENT, ErrorCode.INPUT_TOO_LARGE}
)


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not hex") from None


#: The emulator's production profiles (attestation._profiles.PROFILES), oldest first.
_PROFILE_NAMES = ("2021", "2022", "2024", "2026")
#: Boot PCRs the emulator lets a caller set: the ones the enclave's launch fixes (0-15).
_BOOT_PCRS = range(16)
_PCR_BYTES = 48


def _boot_pcr(value: str) -> tuple[int, bytes]:
    index, sep, data = value.partition("=")
    if not sep or not index.strip().isdigit() or int(index) not in _BOOT_PCRS:
        raise argparse.ArgumentTypeError(f"{value!r} is not INDEX=HEX with INDEX in 0..15")
    digest = _hex(data)
    if len(digest) != _PCR_BYTES:
        raise argparse.ArgumentTypeError(
            f"PCR{int(index)} must be {_PCR_BYTES} bytes (96 hex digits), got {len(digest)}"
        )
    return int(index), digest


def _field_max(value: str) -> int | None:
    if value == "none":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte count or 'none'")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="nsm",
        description="Talk to the AWS Nitro Secure Module (/dev/nsm), or run its emulator.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--device", metavar="PATH", help="the NSM device (default /dev/nsm)")
    where.add_argument("--emulator", metavar="unix:PATH", help="use the emulator at this socket")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("describe", help="DescribeNSM: version, module id, locked PCRs")
    p.add_argument("--json", action="store_true", help="print JSON")

    pcr = sub.add_parser("pcr", help="read, extend or lock PCRs")
    pcr_sub = pcr.add_subparsers(dest="pcr_command", metavar="ACTION", required=True)
    p = pcr_sub.add_parser("get", help="DescribePCR: a PCR's value and lock state")
    p.add_argument("index", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = pcr_sub.add_parser("extend", help="ExtendPCR: new = SHA384(old || data)")
    p.add_argument("index", type=int)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--hex", type=_hex, dest="data", help="data as hex")
    data.add_argument("--text", dest="text", help="data as UTF-8 text")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = pcr_sub.add_parser("lock", help="LockPCR: lock one PCR")
    p.add_argument("index", type=int)
    p = pcr_sub.add_parser("lock-range", help="LockPCRs: lock PCRs [0, RANGE)")
    p.add_argument("range", type=int)

    p = sub.add_parser("random", help="GetRandom: N random bytes (hex by default)")
    p.add_argument("count", type=int)
    p.add_argument("--raw", action="store_true", help="write raw bytes to stdout")

    p = sub.add_parser(
        "attest", help="Attestation: a signed document (base64 on stdout by default)"
    )
    p.add_argument("--nonce", type=_hex, help="nonce as hex (AWS documents at most 1024 bytes)")
    p.add_argument("--user-data", type=_hex, help="user data as hex (AWS: at most 1024 bytes)")
    p.add_argument("--public-key", type=_hex, help="public key as hex (AWS: at most 1024 bytes)")
    p.add_argument("--out", type=Path, help="write the raw document (CBOR) to this file")

    shim = sub.add_parser("shim", help="the LD_PRELOAD shim that routes /dev/nsm to the emulator")
    shim_sub = shim.add_subparsers(dest="shim_command", metavar="ACTION", required=True)
    p = shim_sub.add_parser(
        "build",
        help="compile the shim with the system C compiler ($CC or cc); prints the library's path",
        description="Compile libnsm_preload.so from the C source shipped in the package. Then: "
        "NSM_EMULATOR=unix:/tmp/nsm.sock LD_PRELOAD=/path/to/libnsm_preload.so your-program",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(),
        metavar="DIR",
        help="directory to write libnsm_preload.so into (created if missing; default: .)",
    )

    emu = sub.add_parser("emulator", help="run the NSM emulator")
    emu_sub = emu.add_subparsers(dest="emulator_command", metavar="ACTION", required=True)
    p = emu_sub.add_parser(
        "serve",
        help="serve the emulator on a Unix socket",
        description="Serve a software NSM on a Unix socket. Its documents are signed by a "
        "local PKI whose root is written to --root-out; no default verifier trusts it.",
    )
    p.add_argument(
        "--socket",
        required=True,
        type=Path,
        help="Unix socket path to listen on; refused while another server listens there (a "
        "stale socket file with no listener is replaced)",
    )
    p.add_argument("--root-out", required=True, type=Path, help="write the root PEM here")
    p.add_argument("--seed", type=int, help="seed for a deterministic PKI and PCRs")
    p.add_argument("--debug", action="store_true", help="debug mode: PCR0/1/2 are zero")
    p.add_argument(
        "--profile",
        default="2026",
        choices=_PROFILE_NAMES,
        help="the era of real NSM output to reproduce (default 2026, today's production shape)",
    )
    p.add_argument(
        "--indefinite",
        action="store_true",
        help="force an indefinite-length payload map (the 2026 profile has one already)",
    )
    p.add_argument(
        "--pcr",
        action="append",
        default=[],
        type=_boot_pcr,
        metavar="INDEX=HEX",
        help="set a boot PCR (0-15) to 48 bytes of hex; repeatable. Real enclaves have PCR3 = "
        "the parent's IAM role hash and PCR8 = the EIF signing certificate hash",
    )
    p.add_argument(
        "--iam-role",
        metavar="ARN",
        help="set PCR3 the way AWS computes it from the parent's role: SHA384(0^48 || ARN)",
    )
    p.add_argument(
        "--field-max",
        type=_field_max,
        default=ATTESTATION_FIELD_MAX,
        metavar="BYTES|none",
        help=f"refuse user_data, nonce or public_key longer than this (default "
        f"{ATTESTATION_FIELD_MAX}, AWS's documented limit; real modules sign larger ones: none)",
    )
    epilog_everywhere(parser, _EXIT_CODES)
    parser.epilog = _EPILOG + "\n" + _EXIT_CODES
    return parser


def _open(args: argparse.Namespace) -> Nsm:
    if args.emulator:
        return Nsm.emulator(emulator_address(args.emulator))
    if args.device:
        return Nsm.device(args.device)
    return Nsm.open()


def _run(args: argparse.Namespace) -> int:
    if args.command == "emulator":
        return _serve(args)
    if args.command == "shim":
        from nsm import shim

        print(shim.build(args.out))
        return 0
    with _open(args) as module:
        if args.command == "describe":
            d = module.describe()
            fields = {
                "version": f"{d.version_major}.{d.version_minor}.{d.version_patch}",
                "module_id": d.module_id,
                "max_pcrs": d.max_pcrs,
                "locked_pcrs": sorted(d.locked_pcrs),
                "digest": d.digest.value,
            }
            _print(fields, args.json)
        elif args.command == "pcr":
            return _pcr(module, args)
        elif args.command == "random":
            data = module.get_random(args.count)
            if args.raw:
                sys.stdout.buffer.write(data)
            else:
                print(data.hex())
        elif args.command == "attest":
            document = module.attestation(
                user_data=args.user_data, nonce=args.nonce, public_key=args.public_key
            )
            if args.out:
                args.out.write_bytes(document)
                print(f"wrote {len(document)} bytes to {args.out}", file=sys.stderr)
            else:
                print(base64.b64encode(document).decode())
    return 0


def _pcr(module: Nsm, args: argparse.Namespace) -> int:
    if args.pcr_command == "get":
        state = module.describe_pcr(args.index)
        _print({"index": args.index, "locked": state.locked, "data": state.data.hex()}, args.json)
    elif args.pcr_command == "extend":
        data = args.data if args.data is not None else args.text.encode()
        value = module.extend_pcr(args.index, data)
        _print({"index": args.index, "data": value.hex()}, args.json)
    elif args.pcr_command == "lock":
        module.lock_pcr(args.index)
    elif args.pcr_command == "lock-range":
        module.lock_pcrs(args.range)
    return 0


def _print(fields: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(dump(fields))
        return
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown}")


def emulator_from_args(args: argparse.Namespace) -> Emulator:
    """The emulator `nsm emulator serve` runs for these parsed arguments."""
    from nsm.emulator import Emulator, extend

    pcrs = dict(args.pcr)
    if args.iam_role is not None:
        if 3 in pcrs:
            raise NsmError("give PCR3 either as --pcr 3=HEX or as --iam-role, not both")
        pcrs[3] = extend(bytes(_PCR_BYTES), args.iam_role.encode())
    return Emulator(
        seed=args.seed,
        debug=args.debug,
        profile=args.profile,
        indefinite=True if args.indefinite else None,
        pcrs=pcrs,
        attestation_field_max=args.field_max,
    )


def _serve(args: argparse.Namespace) -> int:
    from nsm._server import EmulatorServer, write_root_pem

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    emulator = emulator_from_args(args)
    # Bind first: a socket another server is listening on is refused (SocketInUseError) before
    # the root is written. Name the path the user gave, not the bare socket call that failed.
    try:
        server = EmulatorServer(args.socket, emulator)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"--socket {args.socket}") from exc
    try:
        write_root_pem(args.root_out, emulator.root_pem)
    except OSError as exc:
        server.server_close()
        raise OSError(exc.errno, exc.strerror, f"--root-out {args.root_out}") from exc

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(
        f"NSM emulator serving on unix:{args.socket} (module {emulator.module_id}); "
        f"root written to {args.root_out}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _failure(exc: Exception, args: argparse.Namespace) -> tuple[int, str, str, str | None]:
    """Exit status, error code, message and hint (naming this command's flags) for `exc`."""
    if isinstance(exc, DeviceNotFound):
        return (
            _EXIT_FAILED,
            "nsm.no-device",
            f"{args.device or '/dev/nsm'} does not exist: this is not a Nitro enclave",
            "off-enclave, start `nsm emulator serve --socket /tmp/nsm.sock --root-out root.pem`"
            " and pass --emulator unix:/tmp/nsm.sock (or set NSM_EMULATOR)",
        )
    if isinstance(exc, ModuleError):
        kebab = exc.code.name.lower().replace("_", "-")
        status = EXIT_USAGE if exc.code in _ARGUMENT_CODES else _EXIT_FAILED
        hint = (
            "PCRs 0-15 are locked by the enclave's launch; extend 16-31"
            if exc.code is ErrorCode.READ_ONLY_INDEX
            else None
        )
        return status, f"nsm.module.{kebab}", str(exc), hint
    if isinstance(exc, ArgumentError):
        return EXIT_USAGE, "usage", str(exc), "see nsm --help"
    if isinstance(exc, OSError):  # --out, --root-out, --socket
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_USAGE, "io", f"{where}{exc.strerror or exc}", None
    code = {ProtocolError: "nsm.protocol", TransportError: "nsm.transport"}
    return (
        _EXIT_FAILED,
        next((c for t, c in code.items() if isinstance(exc, t)), "nsm"),
        str(exc),
        None,
    )


def main(argv: list[str] | None = None) -> int:
    as_json = wants_json(argv)
    try:
        try:
            args = _parser().parse_args(argv)
        except UsageError as exc:
            return report_usage_error(exc, prog="nsm", as_json=as_json)
        try:
            return _run(args)
        except (NsmError, OSError) as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            status, code, message, hint = _failure(exc, args)
            if as_json:
                print(dump(error_json(code, message, hint)))
            else:
                print(f"nsm: error: {message}", file=sys.stderr)
                if hint:
                    print(f"hint: {hint}", file=sys.stderr)
            return status
    except BrokenPipeError:
        return stdout_closed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
