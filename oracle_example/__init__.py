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

from oracle_example.binding import VerifiedReport, verify_report
from oracle_example.config import OracleConfig
from oracle_example.errors import OracleExampleError

__all__ = ["OracleConfig", "OracleExampleError", "VerifiedReport", "verify_report"]
