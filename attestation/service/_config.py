"""The verifier service's configuration: a TOML file, validated completely before serving.

```toml
[service]
listen = "127.0.0.1:8080"        # HOST:PORT; [v6]:PORT for IPv6
max_body_bytes = 16384           # 413 above this
allow_at_override = false        # accept a client-chosen verification time (audits, tests only)
access_log = true                # one JSON line per request, never the body
trust_roots = ["aws"]            # "aws" = the pinned AWS root; anything else is a PEM file path
max_connections = 1000           # open connections (lowered to fit the descriptor limit)
head_timeout_seconds = 10        # a request head must arrive within this (408 after)
body_timeout_seconds = 30        # the body must arrive, and the answer leave, within this

[policies.price-oracle]
pcrs = { 0 = "<96 hex>", 1 = "<96 hex>", 2 = "<96 hex>" }
# or several allowed sets: pcr_sets = [{ 0 = "..." }, { 0 = "..." }]
max_age_seconds = 300
allow_debug = false              # debug documents are refused unless this says otherwise

[policies.build-fleet]
kind = "nitrotpm"                # EC2 instance (NitroTPM) documents; default "nitro-enclave"
pcrs = { 4 = "<96 hex>", 12 = "<96 hex>" }   # nitrotpm_pcrs registers 0..23; no allow_debug
```

Every problem is reported as a `ConfigError` naming the file, the table and the key, so a typo
stops the service at start instead of turning into a policy that silently accepts more.
Clients never supply trust roots: they only name a policy defined here.
"""

from __future__ import annotations

import datetime as _dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography import x509

from attestation.document import DocumentKind
from attestation.errors import AttestationError
from attestation.policy import NitroTpmPolicy, Policy, VerificationPolicy
from attestation.roots import aws_nitro_root, load_pem_roots

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_BODY_BYTES",
    "ConfigError",
    "PolicyConfig",
    "ServiceConfig",
    "load_config",
    "parse_config",
    "parse_listen",
]

# Loopback by default: exposing the service is a deployment decision (docs/deployment.md).
DEFAULT_LISTEN = "127.0.0.1:8080"
# 413 for a body over the limit, 16 KiB by default (docs/deployment.md). A real document is ~4.4 KB
# (vectors/real/MANIFEST.json: 4394..4642 bytes), ~6 KB as base64 in JSON.
DEFAULT_MAX_BODY_BYTES = 16 * 1024
# The largest body limit accepted: the parser refuses documents above MAX_DOCUMENT_SIZE
# (16896 bytes) anyway, and base64 in JSON adds a third; 64 KiB leaves room for both.
MAX_MAX_BODY_BYTES = 64 * 1024
# The library's own default freshness bound (attestation.policy.Policy).
DEFAULT_MAX_AGE = _dt.timedelta(minutes=5)
# A leaf certificate lives 3 hours (docs/fidelity.md); a larger max age is never useful
# because the chain stops verifying first, so a larger value is almost certainly a unit mistake.
MAX_MAX_AGE = _dt.timedelta(hours=3)
# Policy names appear in URLs, metrics labels and logs: keep them to a safe alphabet.
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AWS_ROOT = "aws"

_SERVICE_KEYS = frozenset(
    {
        "listen",
        "max_body_bytes",
        "allow_at_override",
        "access_log",
        "trust_roots",
        "max_connections",
        "head_timeout_seconds",
        "body_timeout_seconds",
    }
)
# Connection bounds (docs/deployment.md, "Hostile clients"): the defaults and the accepted range.
DEFAULT_MAX_CONNECTIONS = 1000
MAX_MAX_CONNECTIONS = 65535
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
_POLICY_KEYS = frozenset({"pcrs", "pcr_sets", "max_age_seconds", "allow_debug", "kind"})
_TOP_KEYS = frozenset({"service", "policies"})


#: The environment variable `app_from_environment` reads the config file's path from.
CONFIG_ENV = "NITRO_ATTEST_SERVICE_CONFIG"


class ConfigError(ValueError):
    """The service configuration is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """One named policy: the PCR sets a document may match, its max age, and debug.

    `kind` is the document kind it verifies: for `"nitrotpm"` the PCR sets are `nitrotpm_pcrs`
    registers and the verification is `Verifier.verify(..., kind="nitrotpm")`.
    """

    name: str
    pcr_sets: tuple[Mapping[int, bytes], ...]
    max_age: _dt.timedelta
    allow_debug: bool
    kind: DocumentKind = "nitro-enclave"

    def build(self, *, nonce: bytes | None = None) -> VerificationPolicy:
        """The library policy for one verification (`nonce` is the caller's, per request)."""
        pcrs = self.pcr_sets[0] if len(self.pcr_sets) == 1 else list(self.pcr_sets)
        if self.kind == "nitrotpm":
            return NitroTpmPolicy(pcrs=pcrs, nonce=nonce, max_age=self.max_age)
        return Policy(pcrs=pcrs, nonce=nonce, max_age=self.max_age, allow_debug=self.allow_debug)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """The whole service configuration, validated."""

    host: str
    port: int
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_at_override: bool = False
    access_log: bool = True
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections at most; `nitro-attest serve` lowers it to fit the descriptor limit."""
    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    """Seconds for a request head to arrive (from the connection or the previous answer)."""
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    """Seconds for the body to arrive after the head, and for the answer to be sent."""
    roots: tuple[x509.Certificate, ...]
    """The trust anchors, loaded and checked at start (the AWS root is pin-checked)."""
    uses_aws_root: bool
    policies: Mapping[str, PolicyConfig]


def load_config(path: str | Path, *, listen: str | None = None) -> ServiceConfig:
    """Read and validate a TOML config file; `listen` overrides `[service] listen`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(document, source=str(path), base_dir=path.parent, listen=listen)


def parse_config(
    document: Mapping[str, object],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    listen: str | None = None,
) -> ServiceConfig:
    """Validate an already-parsed TOML document (see the module docstring for the keys)."""
    _no_unknown(document, _TOP_KEYS, source, "top level")
    service = _table(document.get("service", {}), f"{source}: [service]")
    _no_unknown(service, _SERVICE_KEYS, source, "[service]")
    where = f"{source}: [service]"

    listen_value = listen if listen is not None else service.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen_value, str):
        raise ConfigError(f"{where} listen: expected a string HOST:PORT")
    try:
        host, port = parse_listen(listen_value)
    except ValueError as exc:
        raise ConfigError(f"{where} listen: {exc}") from exc

    max_body = service.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    if type(max_body) is not int or not 1 <= max_body <= MAX_MAX_BODY_BYTES:
        raise ConfigError(
            f"{where} max_body_bytes: expected an integer in 1..{MAX_MAX_BODY_BYTES}, "
            f"got {max_body!r}"
        )
    allow_at = _bool(service.get("allow_at_override", False), f"{where} allow_at_override")
    access_log = _bool(service.get("access_log", True), f"{where} access_log")
    max_connections = service.get("max_connections", DEFAULT_MAX_CONNECTIONS)
    if type(max_connections) is not int or not 1 <= max_connections <= MAX_MAX_CONNECTIONS:
        raise ConfigError(
            f"{where} max_connections: expected an integer in 1..{MAX_MAX_CONNECTIONS}, "
            f"got {max_connections!r}"
        )
    head_timeout = _seconds(service, "head_timeout_seconds", DEFAULT_HEAD_TIMEOUT, where)
    body_timeout = _seconds(service, "body_timeout_seconds", DEFAULT_BODY_TIMEOUT, where)
    roots, uses_aws = _roots(service.get("trust_roots", [_AWS_ROOT]), where, base_dir)

    policies_table = _table(document.get("policies", {}), f"{source}: [policies]")
    if not policies_table:
        raise ConfigError(
            f"{source}: no [policies.NAME] table: the service would refuse everything"
        )
    policies: dict[str, PolicyConfig] = {}
    for name, table in policies_table.items():
        policies[name] = _policy(name, table, source)
    return ServiceConfig(
        host=host,
        port=port,
        max_body_bytes=max_body,
        allow_at_override=allow_at,
        access_log=access_log,
        max_connections=max_connections,
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        roots=roots,
        uses_aws_root=uses_aws,
        policies=MappingProxyType(policies),
    )


def _seconds(table: Mapping[str, object], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    # bool is an int subclass: `true` is not a number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} {key}: expected a number of seconds, got {value!r}")
    if not 0.1 <= value <= MAX_TIMEOUT:
        raise ConfigError(f"{where} {key}: expected seconds in 0.1..{MAX_TIMEOUT:g}, got {value}")
    return float(value)


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPV6]:PORT` to `(host, port)`; `ValueError` with a reason otherwise."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
    else:
        host, sep, port_text = value.rpartition(":")
    if not sep or not host or (":" in host and not value.startswith("[")):
        raise ValueError(f"expected HOST:PORT (or [IPV6]:PORT), got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port_text!r}")
    return host, int(port_text)


def _policy(name: str, value: object, source: str) -> PolicyConfig:
    where = f"{source}: [policies.{name}]"
    if not _POLICY_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: a policy name is 1-64 of A-Z a-z 0-9 . _ - (letter or digit first)"
        )
    table = _table(value, where)
    _no_unknown(table, _POLICY_KEYS, source, f"[policies.{name}]")
    if ("pcrs" in table) == ("pcr_sets" in table):
        raise ConfigError(
            f"{where}: give exactly one of pcrs = {{...}} or pcr_sets = [{{...}}, ...]"
        )
    sets: tuple[Mapping[int, bytes], ...]
    if "pcrs" in table:
        sets = (_pcr_set(table["pcrs"], f"{where} pcrs"),)
    else:
        raw_sets = table["pcr_sets"]
        if not isinstance(raw_sets, list) or not raw_sets:
            raise ConfigError(f"{where} pcr_sets: expected a non-empty array of tables")
        sets = tuple(_pcr_set(s, f"{where} pcr_sets[{i}]") for i, s in enumerate(raw_sets))
    seconds = table.get("max_age_seconds", DEFAULT_MAX_AGE.total_seconds())
    # type() not isinstance(): TOML `true` is a bool, and bool is an int.
    if not (
        type(seconds) in (int, float)
        and isinstance(seconds, int | float)
        and 0 < seconds <= MAX_MAX_AGE.total_seconds()
    ):
        raise ConfigError(
            f"{where} max_age_seconds: expected a number of seconds in "
            f"(0, {int(MAX_MAX_AGE.total_seconds())}], got {seconds!r}"
        )
    kind = table.get("kind", "nitro-enclave")
    if kind not in ("nitro-enclave", "nitrotpm"):
        raise ConfigError(f'{where} kind: expected "nitro-enclave" or "nitrotpm", got {kind!r}')
    allow_debug = _bool(table.get("allow_debug", False), f"{where} allow_debug")
    if kind == "nitrotpm" and allow_debug:
        raise ConfigError(f"{where} allow_debug: debug mode is an enclave's; not for nitrotpm")
    config = PolicyConfig(
        name=name,
        pcr_sets=sets,
        max_age=_dt.timedelta(seconds=seconds),
        allow_debug=allow_debug,
        kind="nitrotpm" if kind == "nitrotpm" else "nitro-enclave",
    )
    try:
        config.build()
    except (AttestationError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return config


def _pcr_set(value: object, where: str) -> Mapping[int, bytes]:
    table = _table(value, where)
    if not table:
        raise ConfigError(f"{where}: at least one PCR is required (a policy must check PCRs)")
    pcrs: dict[int, bytes] = {}
    for key, hex_value in table.items():
        if not key.isdigit() or not 0 <= int(key) <= 31:
            raise ConfigError(f"{where}: key {key!r} is not a PCR index 0..31")
        if not isinstance(hex_value, str):
            raise ConfigError(f"{where}.{key}: expected a hex string")
        try:
            raw = bytes.fromhex(hex_value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{key}: not hex") from exc
        if len(raw) not in (32, 48, 64):
            raise ConfigError(
                f"{where}.{key}: a PCR is 32, 48 or 64 bytes (SHA384: 96 hex digits), "
                f"got {len(raw)} bytes"
            )
        pcrs[int(key)] = raw
    return MappingProxyType(dict(sorted(pcrs.items())))


def _roots(
    value: object, where: str, base_dir: Path | None
) -> tuple[tuple[x509.Certificate, ...], bool]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{where} trust_roots: expected a non-empty array like ["aws"]')
    roots: list[x509.Certificate] = []
    uses_aws = False
    for entry in value:
        assert isinstance(entry, str)
        if entry == _AWS_ROOT:
            uses_aws = True
            try:
                roots.append(aws_nitro_root())
            except AttestationError as exc:
                raise ConfigError(f"{where} trust_roots: {exc}") from exc
            continue
        path = Path(entry)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where} trust_roots: {path}: {exc.strerror or exc}") from exc
        try:
            roots.extend(load_pem_roots(pem))
        except AttestationError as exc:
            raise ConfigError(f"{where} trust_roots: {path}: {exc.reason}") from exc
    return tuple(roots), uses_aws


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _no_unknown(
    table: Mapping[str, object], known: frozenset[str], source: str, where: str
) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{source}: {where}: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
