"""The reference enclave application: an attested price oracle.

It fetches prices over HTTPS from inside a Nitro enclave (through `enclave_net`'s egress, no DNS
in the enclave), signs reports with a secp256k1 key born in the enclave, and binds that key to
an attestation document, so that anyone can check a price came from measured code.

Modules, each with its own `__all__`: `config`, `sources` (what an exchange adapter is),
`exchanges` (the adapters), `aggregate`, `report` (the signed wire format, EIP-712), `binding`
(attestation <-> signing key, `verify_report`), `oracle` (boot, rounds, signing), `api` (its
HTTP API), `probes` (the doctor's exchange probes), `client`, `demo`, `errors`.

```python
from oracle_example import verify_report
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave_net._extras import import_or_explain
from oracle_example.errors import OracleExampleError

if TYPE_CHECKING:
    from oracle_example.binding import VerifiedReport, verify_report
    from oracle_example.config import OracleConfig

#: Loaded on first use: without the [oracle] extra, `import oracle_example` works and these
#: names raise `MissingExtraError` (an ImportError) naming the extra, not a bare traceback.
_LAZY = {
    "OracleConfig": "oracle_example.config",
    "VerifiedReport": "oracle_example.binding",
    "verify_report": "oracle_example.binding",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oracle_example' has no attribute {name!r}")
    return getattr(import_or_explain(module, "oracle"), name)


__all__ = ["OracleConfig", "OracleExampleError", "VerifiedReport", "verify_report"]

#: The distribution's version: pyproject.toml reads it from attestation/__init__.py, and a test
#: keeps the four packages equal.
__version__ = "0.1.0"
