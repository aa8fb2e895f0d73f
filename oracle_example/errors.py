"""The error tree of `oracle_example`: config, sources, aggregation, reports and their
verification, the enclave's boot, the client.

One root, `OracleExampleError`, so a caller can catch everything this package raises with one
clause. (`OracleError` is taken: it is an EIP-712 type name in the report format, a signed
message, not an exception: see `report.py`.) Each error carries a stable `code` string, like
`attestation`'s errors, for logs, the CLI and JSON error bodies. Networking failures are
`enclave_net`'s (`EnclaveNetError`); the oracle translates them where it catches them.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "AggregationError",
    "BindingError",
    "ClientError",
    "ConfigError",
    "EnclaveBootError",
    "OracleExampleError",
    "OracleReported",
    "ReportFormatError",
    "ReportVerificationError",
    "SignatureFormatError",
    "SourceBlocked",
    "SourceError",
    "SourceHttpError",
    "SourceMalformed",
    "SourceRateLimited",
    "SourceUnreachable",
]


class OracleExampleError(Exception):
    """Root of every error raised by `oracle_example`; `code` is stable, the message is for
    humans."""

    code: str = "oracle.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(OracleExampleError, ValueError):
    """The oracle configuration is invalid or not canonical."""

    code = "oracle.config"


# --- sources ------------------------------------------------------------------------------------


class SourceError(OracleExampleError):
    """One source's answer could not be used this round."""

    code = "source.error"

    def __init__(self, message: str, *, source: str, code: str | None = None) -> None:
        super().__init__(f"{source}: {message}", code=code)
        self.source = source


class SourceMalformed(SourceError):
    """The body is not the source's documented shape (or a price in it is unusable)."""

    code = "source.malformed"


class SourceHttpError(SourceError):
    """A non-200 status that is neither a block (451) nor a rate limit (429/418)."""

    code = "source.http"

    def __init__(self, message: str, *, source: str, status: int) -> None:
        super().__init__(message, source=source)
        self.status = status


class SourceUnreachable(SourceError):
    """The fetch itself failed (egress refused, connect error, timeout): no status at all."""

    code = "source.unreachable"


class SourceBlocked(SourceError):
    """HTTP 451: the exchange refuses the egress IP's jurisdiction. Disable it for the session."""

    code = "source.blocked"

    def __init__(self, message: str, *, source: str, status: int = 451) -> None:
        super().__init__(message, source=source)
        self.status = status


class SourceRateLimited(SourceError):
    """429 (limit broken) or 418 (IP banned): do not ask again before `retry_after`."""

    code = "source.rate_limited"

    def __init__(self, message: str, *, source: str, status: int, retry_after: timedelta) -> None:
        super().__init__(message, source=source)
        self.status = status
        self.retry_after = retry_after


# --- aggregation, reports, binding --------------------------------------------------------------


class AggregationError(OracleExampleError, ValueError):
    """Aggregation was called with inconsistent inputs (a programming error, not thin data)."""

    code = "aggregate.invalid"


class ReportFormatError(OracleExampleError, ValueError):
    """A report (typed data, JSON or field value) is not in the exact expected form."""

    code = "report.format"


class SignatureFormatError(ReportFormatError):
    """A signature is not 65 bytes, has v outside {27, 28}, high s, or recovers no key."""

    code = "report.signature_format"


class BindingError(OracleExampleError, ValueError):
    """A `public_key` or `user_data` does not have the fixed layout of binding.py."""

    code = "binding.layout"


class ReportVerificationError(OracleExampleError):
    """`verify_report` refused a report; `step` names the link of the chain that broke."""

    code = "verify.failed"

    def __init__(self, message: str, *, step: str, code: str) -> None:
        super().__init__(f"{step}: {message}", code=code)
        self.step = step


class OracleReported(ReportVerificationError):
    """The report verified, but it is a signed `OracleError`: the enclave refused to price.

    `error` holds the verified `report.OracleError` (code, timestamp, roundId, detailHash).
    """

    def __init__(self, message: str, *, error: object) -> None:
        super().__init__(message, step="report", code="verify.oracle_error")
        self.error = error


# --- the enclave and the client -----------------------------------------------------------------


class EnclaveBootError(OracleExampleError):
    """The enclave refused to start: a production requirement failed, or the NSM did."""

    code = "enclave.boot"


class ClientError(OracleExampleError):
    """The gateway could not be reached, or answered something that is not the API."""

    code = "client.transport"
