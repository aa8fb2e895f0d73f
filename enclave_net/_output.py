"""The command lines' side of the output contract (nsm_attestation_cli): exit codes, and
exceptions as the one error shape, with hints that name this kit's flags."""

from __future__ import annotations

import re
import sys

from enclave_net.errors import EnclaveNetError
from nsm_attestation_cli import dump, error_json

__all__ = ["EXIT_CODES", "error_fields", "print_error"]

EXIT_CODES = """\
exit status:
  0    done (servers: stopped by a signal)
  1    fetch: the request failed; doctor: a check failed; kms: KMS answered with an error
  2    usage error, or a configuration or file that cannot be used
  3    kms: anything else failed (egress, credentials, NSM, attestation)
  141  stdout closed early (e.g. | head)
With --json, results and errors are JSON on stdout (docs/schemas/).
"""

# Hints by error class, in terms of this command line's flags.
_HINTS = {
    "net.no-route": "add --route HOST:PORT=ADDR for this host, or --connect ADDR with --allow",
    "net.egress-connect": "is the parent's proxy listening there? (`enclave-net egress` on the "
    "parent; `enclave-net doctor --parent` checks it)",
    "net.tls-verification": "a private CA needs --ca-bundle PEM; check the host name and clock",
    "net.egress-timeout": "the parent or upstream is slow or unreachable: --timeout SECONDS",
    "net.proxy-refused": "the parent's CONNECT allow list must name this HOST:PORT",
}


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def error_fields(exc: BaseException) -> tuple[str, str, str | None]:
    """The error shape's code, message and hint for an exception a command line reports.

    Errors with a stable `code` keep it (the oracle's; KMS's, which are AWS's error names);
    `enclave_net`'s are named by class (`NoRouteError` -> `net.no-route`).
    """
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        pass
    elif isinstance(exc, EnclaveNetError):
        code = "net." + _kebab(type(exc).__name__.removesuffix("Error"))
    elif isinstance(exc, OSError):
        code = "io"
    elif isinstance(exc, ValueError):
        code = "usage"
    else:
        code = _kebab(type(exc).__name__)
    return code, str(exc), _HINTS.get(code)


def print_error(
    exc: BaseException,
    *,
    as_json: bool,
    prefix: str,
    code: str | None = None,
    **context: object,
) -> None:
    """Report `exc`: the error shape on stdout under --json, else one line on stderr. `code`
    replaces the one `error_fields` derives."""
    derived, message, hint = error_fields(exc)
    code = code or derived
    if as_json:
        print(dump(error_json(code, message, hint, **context)))
        return
    print(f"{prefix}: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
