"""The reference enclave application: an attested price oracle.

It fetches prices over HTTPS from inside a Nitro enclave (through vsock, no DNS in the
enclave), signs reports with a secp256k1 key born in the enclave, and binds that key to an
attestation document, so that anyone can check a price came from measured code.

Modules, each with its own `__all__`: `address` (vsock/unix/tcp addresses), `egress` (HTTPS
from the enclave), `proxy` (the parent's egress proxy), `doctor`, `config`, `sources`,
`aggregate`, `report` (EIP-712), `binding` (attestation <-> signing key, `verify_report`),
`enclave`, `gateway`, `client`, `demo`.

```python
from oracle_example import EgressClient, EgressConfig

config = EgressConfig.from_strings(routes=["api.binance.com:443=vsock:3:8443"])
with EgressClient(config) as client:
    print(client.get("https://api.binance.com/api/v3/time").json())
```
"""

from __future__ import annotations

from oracle_example.binding import VerifiedReport, verify_report
from oracle_example.config import OracleConfig
from oracle_example.egress import AsyncEgressClient, EgressClient, EgressConfig
from oracle_example.errors import OracleExampleError

__all__ = [
    "AsyncEgressClient",
    "EgressClient",
    "EgressConfig",
    "OracleConfig",
    "OracleExampleError",
    "VerifiedReport",
    "verify_report",
]
