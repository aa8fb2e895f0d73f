"""The one machine-output contract: how results and errors look as JSON.

Every command with `--json` and the HTTP verifier service print one of two shapes, published
as JSON Schemas in `docs/schemas/`:

- a result, whose shape depends on what the command does; a verification result is
  `VerifiedDocument.to_dict()` (plus `"policy"`, the configured policy's name, in the service);
- an error: `{"error": {"code": str, "message": str, "hint": str | null}}`, where `code` is a
  stable identifier (the library's `AttestationError.code`, or the command's own), `message`
  says what went wrong and `hint` what to do about it, in the terms of the surface that printed
  it (a flag for a command, a config key for the service). A few context keys may sit beside
  `"error"` (`"verified": false`, the policy, the URL, the feed), never inside it.

Values: bytes are lower-case hex; times are RFC 3339 in UTC with milliseconds and `Z`
(a document's own timestamp has millisecond precision; nothing finer is ever claimed).

The error shape, exit codes and argparse plumbing shared by every command live in
`nsm_attestation_cli`; this module adds what is the verifier's own: times, hex and certificates
as the result shape writes them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import warnings

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["certificate_json", "hex_or_none", "iso_time"]


def iso_time(when: _dt.datetime) -> str:
    """`when` in UTC as RFC 3339 with milliseconds and `Z`, e.g. `2026-01-02T03:04:05.678Z`."""
    return when.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _name(cert: x509.Certificate, which: str) -> str:
    # A crafted certificate's name may not decode (bad UTF-8, an 8-bit TeletexString...): the
    # output says so instead of failing (such a chain never verifies; inspect still shows it).
    try:
        with warnings.catch_warnings():
            # Some versions only warn (an odd-length country name): undecodable all the same.
            warnings.simplefilter("error", UserWarning)
            name: x509.Name = getattr(cert, which)
            return name.rfc4514_string()
    # KeyError: cryptography 45 to 48 raise it for a name string of an unknown ASN.1 tag.
    except (ValueError, TypeError, KeyError, UnicodeError, UserWarning):
        return f"<undecodable {which}>"


def certificate_json(cert: x509.Certificate) -> dict[str, str]:
    """A certificate as the result shape lists it (subject and issuer in RFC 4514 form)."""
    return {
        "subject": _name(cert, "subject"),
        "issuer": _name(cert, "issuer"),
        "serial": format(cert.serial_number, "x"),
        "not_before": iso_time(cert.not_valid_before_utc),
        "not_after": iso_time(cert.not_valid_after_utc),
        "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    }
