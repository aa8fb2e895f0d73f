"""Client for the AWS Nitro Secure Module (`/dev/nsm`), and an emulator of it.

```python
from nsm import Nsm

with Nsm.open() as module:          # /dev/nsm inside an enclave
    doc = module.attestation(nonce=b"...", public_key=key_der)

with Nsm.emulator("/tmp/nsm.sock") as module:   # off-enclave, explicitly
    print(module.describe())
```
"""

from __future__ import annotations

from nsm._transport import UnixTransport
from nsm.client import Nsm
from nsm.device import DeviceTransport
from nsm.errors import (
    ArgumentError,
    DeviceError,
    DeviceNotFound,
    ModuleError,
    NsmError,
    ProtocolError,
    TransportError,
)
from nsm.models import Description, Digest, ErrorCode, PcrState

__all__ = [
    "ArgumentError",
    "Description",
    "DeviceError",
    "DeviceNotFound",
    "DeviceTransport",
    "Digest",
    "ErrorCode",
    "ModuleError",
    "Nsm",
    "NsmError",
    "PcrState",
    "ProtocolError",
    "TransportError",
    "UnixTransport",
]

#: The distribution's version: pyproject.toml reads it from attestation/__init__.py, and a test
#: keeps the four packages equal.
__version__ = "0.1.0"
