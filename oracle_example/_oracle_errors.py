"""Errors of the oracle core: config, sources, aggregation, reports and their verification.

They hang under `OracleExampleError` (in `errors.py`, the package's one root) so a caller can
catch everything `oracle_example` raises with one clause. Each carries a stable `code` string,
like `attestation`'s errors, for logs, the CLI and JSON error bodies.

(The EIP-712 struct `OracleError` is a signed message, not an exception: see `report.py`.)
"""

from __future__ import annotations

from datetime import timedelta

from oracle_example.errors import OracleExampleError

__all__ = [
    "AggregationError",
    "BindingError",
    "ConfigError",
    "OracleCoreError",
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


class OracleCoreError(OracleExampleError):
    """Root of the oracle core's errors; `code` is stable, the message is for humans."""

    code: str = "oracle.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(OracleCoreError, ValueError):
    """The oracle configuration is invalid or not canonical."""

    code = "oracle.config"


# --- sources ------------------------------------------------------------------------------------


class SourceError(OracleCoreError):
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


class AggregationError(OracleCoreError, ValueError):
    """Aggregation was called with inconsistent inputs (a programming error, not thin data)."""

    code = "aggregate.invalid"


class ReportFormatError(OracleCoreError, ValueError):
    """A report (typed data, JSON or field value) is not in the exact expected form."""

    code = "report.format"


class SignatureFormatError(ReportFormatError):
    """A signature is not 65 bytes, has v outside {27, 28}, high s, or recovers no key."""

    code = "report.signature_format"


class BindingError(OracleCoreError, ValueError):
    """A `public_key` or `user_data` does not have the fixed layout of oracle.md §2.2."""

    code = "binding.layout"


class ReportVerificationError(OracleCoreError):
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
