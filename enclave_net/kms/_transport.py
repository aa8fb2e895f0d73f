"""The one place `enclave_net.kms` reaches the enclave egress and the address syntax.

KMS requests go out as HTTPS through the egress (TLS ends in the enclave, SNI and certificate
checks against `kms.REGION.amazonaws.com`, no DNS); the credentials endpoint is a parent address
(`vsock:3:PORT` in production, `unix:PATH` in tests). When the egress moves, only the imports
below change.
"""

from __future__ import annotations

from oracle_example.address import Address, bind_socket, connect_socket, parse_address
from oracle_example.egress import (
    AsyncEgressClient,
    EgressConfig,
    Response,
    Timeouts,
    forbid_dns,
)
from oracle_example.errors import EgressError

__all__ = [
    "Address",
    "AsyncEgressClient",
    "EgressConfig",
    "EgressError",
    "Response",
    "Timeouts",
    "bind_socket",
    "connect_socket",
    "forbid_dns",
    "parse_address",
]
