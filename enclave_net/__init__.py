"""Networking for AWS Nitro Enclave apps: HTTPS out of the enclave without DNS, and the parent.

Modules, each with its own `__all__`: `address` (vsock/unix/tcp addresses), `egress` (the
enclave's HTTPS client: an httpcore backend over routes or CONNECT, async), `proxy` (the parent's
egress proxy; `proxy_config` its configuration), `gateway` (the parent's TCP front for an enclave
API), `netif` (bringing `lo` up), `jsonlog` (JSON-lines logging), `doctor`, `errors`, and
`kms` (AWS KMS with attestation: the enclave decrypts what only its measured code may read).
Install with the `[net]` extra (`[kms]` for `enclave_net.kms`).

```python
import asyncio
from enclave_net import EgressClient, EgressConfig

async def main() -> None:
    config = EgressConfig.from_strings(routes=["api.binance.com:443=vsock:3:8443"])
    async with EgressClient(config) as client:
        print((await client.get("https://api.binance.com/api/v3/time")).json())

asyncio.run(main())
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from enclave_net._extras import import_or_explain
from enclave_net.errors import EgressError, EnclaveNetError

if TYPE_CHECKING:
    from enclave_net.egress import EgressClient, EgressConfig, Response, Timeouts

#: Loaded on first use, so that `import enclave_net` (and `enclave-net --help`) work without the
#: [net] extra and say which extra is missing instead of a traceback.
_LAZY = {
    name: "enclave_net.egress" for name in ("EgressClient", "EgressConfig", "Response", "Timeouts")
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'enclave_net' has no attribute {name!r}")
    return getattr(import_or_explain(module, "net"), name)


__all__ = ["EgressClient", "EgressConfig", "EgressError", "EnclaveNetError", "Response", "Timeouts"]

#: The distribution's version: pyproject.toml reads it from attestation/__init__.py, and a test
#: keeps the four packages equal.
__version__ = "0.1.0"
