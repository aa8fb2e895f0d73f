"""The error tree of `enclave_net`.

One root, `EnclaveNetError`, so callers can catch everything this package raises with one
clause. Foreign exceptions (OSError, ssl.SSLError, httpcore's) are translated once, where they
are caught, with `raise ... from` so the original stays attached.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "EgressConfigError",
    "EgressConnectError",
    "EgressError",
    "EgressProtocolError",
    "EgressTimeout",
    "EnclaveNetError",
    "InterfaceError",
    "NoRouteError",
    "ProxyConfigError",
    "ProxyRefusedError",
    "TLSVerificationError",
]


class EnclaveNetError(Exception):
    """Root of every error raised by `enclave_net`."""


class EgressError(EnclaveNetError):
    """Egress (enclave side or parent side) failed or was misconfigured."""


class AddressError(EgressError, ValueError):
    """A `vsock:CID:PORT`, `unix:PATH` or `tcp:HOST:PORT` string is malformed."""


class EgressConfigError(EgressError, ValueError):
    """The enclave-side egress configuration is inconsistent (bad route, bad bundle...)."""


class NoRouteError(EgressError):
    """The enclave refused a host that is not in its route table; no byte left the enclave."""


class EgressConnectError(EgressError):
    """The parent address could not be reached, or the parent closed the stream early."""


class EgressTimeout(EgressError):
    """A connect, read, write or pool timeout expired."""


class ProxyRefusedError(EgressError):
    """The parent CONNECT proxy answered with a non-2xx status (403 refused, 502 upstream...)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class TLSVerificationError(EgressError):
    """The server's certificate chain or hostname did not verify against the CA bundle."""

    def __init__(self, message: str, *, verify_code: int | None = None) -> None:
        super().__init__(message)
        # OpenSSL's X509_V_ERR_* code: 62 hostname mismatch, 10 expired, 9 not yet valid.
        self.verify_code = verify_code


class EgressProtocolError(EgressError):
    """The peer sent something that is not valid HTTP."""


class ProxyConfigError(EgressError, ValueError):
    """The parent-side proxy configuration (routes, allowlist, config file) is invalid."""


class InterfaceError(EgressError):
    """Reading or setting a network interface's flags failed (missing, or no CAP_NET_ADMIN)."""
