"""`enclave-net doctor`: check each link of the egress path and name the one that broke.

By side: `enclave` (the host: vsock, lo, resolv.conf and the legacy DNS chain, entropy, the NSM;
then the egress path), `egress` (route, TLS, HTTP, the probe's JSON, the clock, concurrency),
`parent` (vsock-proxy, the egress proxy's config, parent DNS, listeners). The app supplies a
`Probe` per upstream host; the doctor takes its clock as a parameter.
"""

from __future__ import annotations

from enclave_net.doctor._cli import add_arguments, run
from enclave_net.doctor._probe import (
    Clock,
    Finding,
    PathProbe,
    Probe,
    ProbeMismatch,
    ServerTime,
    Status,
    fail,
    json_body,
    ok,
    snippet,
    warn,
)
from enclave_net.doctor.egress import check_egress
from enclave_net.doctor.enclave import enclave_checks
from enclave_net.doctor.parent import parent_checks

__all__ = [
    "Clock",
    "Finding",
    "PathProbe",
    "Probe",
    "ProbeMismatch",
    "ServerTime",
    "Status",
    "add_arguments",
    "check_egress",
    "enclave_checks",
    "fail",
    "json_body",
    "ok",
    "parent_checks",
    "run",
    "snippet",
    "warn",
]
