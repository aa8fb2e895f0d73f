"""The KMS double's configuration: principals, keys, and key policies with the
`kms:RecipientAttestation:*` conditions (the grammar the double evaluates; see `double`'s
docstring). Everything here is checked when the config loads.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import PolicyError, VerifiedDocument
from enclave_net.kms.credentials import Credentials
from enclave_net.kms.errors import KmsError, NotFoundException

__all__ = [
    "ACTIONS",
    "DoubleConfig",
    "DoubleConfigError",
    "DoubleKey",
    "KeyPolicyGate",
    "PolicyDenied",
    "Principal",
    "Statement",
    "allowed",
]

_CONDITION_KEY = re.compile(
    r"^kms:RecipientAttestation:(?:ImageSha384|PCR([0-9]|[12][0-9]|3[01]))$"
)
_OPERATORS = frozenset({"StringEquals", "StringEqualsIgnoreCase"})
ACTIONS = frozenset(
    {"Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyPair", "GenerateRandom"}
)


class DoubleConfigError(KmsError, ValueError):
    """The double's config file is inconsistent or uses policy grammar the double lacks."""


# --- key policies ---------------------------------------------------------------------------


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise DoubleConfigError(f"{what}: expected a string or a non-empty list of strings")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class _Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    def holds(self, context: Mapping[str, str]) -> bool:
        actual = context.get(self.key)
        if actual is None:
            return False
        if self.operator == "StringEqualsIgnoreCase":
            return any(actual.casefold() == v.casefold() for v in self.values)
        return actual in self.values


@dataclass(frozen=True, slots=True)
class Statement:
    effect: str
    principals: tuple[str, ...]
    actions: tuple[str, ...]
    conditions: tuple[_Condition, ...]

    @classmethod
    def parse(cls, raw: Any, where: str) -> Statement:
        if not isinstance(raw, dict):
            raise DoubleConfigError(f"{where}: a statement must be an object")
        unknown = set(raw) - {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
        if unknown:
            raise DoubleConfigError(f"{where}: unsupported statement fields {sorted(unknown)}")
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise DoubleConfigError(f"{where}: Effect must be Allow or Deny")
        principal = raw.get("Principal", "*")
        if principal == "*":
            principals: tuple[str, ...] = ("*",)
        elif isinstance(principal, dict) and set(principal) == {"AWS"}:
            principals = _strings(principal["AWS"], f"{where}: Principal.AWS")
        else:
            raise DoubleConfigError(f'{where}: Principal must be "*" or {{"AWS": ...}}')
        actions = _strings(raw.get("Action"), f"{where}: Action")
        for action in actions:
            if action != "kms:*" and action.removeprefix("kms:") not in ACTIONS:
                raise DoubleConfigError(f"{where}: action {action!r} is not one the double has")
        if _strings(raw.get("Resource", "*"), f"{where}: Resource") != ("*",):
            raise DoubleConfigError(f'{where}: a key policy\'s Resource is "*"')
        conditions = []
        block = raw.get("Condition", {})
        if not isinstance(block, dict):
            raise DoubleConfigError(f"{where}: Condition must be an object")
        for operator, pairs in block.items():
            if operator not in _OPERATORS or not isinstance(pairs, dict):
                raise DoubleConfigError(f"{where}: condition operator {operator!r} unsupported")
            for key, values in pairs.items():
                if not _CONDITION_KEY.match(key):
                    raise DoubleConfigError(f"{where}: condition key {key!r} unsupported")
                conditions.append(_Condition(operator, key, _strings(values, f"{where}: {key}")))
        return cls(effect, principals, actions, tuple(conditions))

    def applies(self, principal: str, account: str, action: str) -> bool:
        root = f"arn:aws:iam::{account}:root"
        who = any(
            p in ("*", principal) or (p == root and _in_account(principal, account))
            for p in self.principals
        )
        what = any(a in ("kms:*", f"kms:{action}") for a in self.actions)
        return who and what


def _in_account(arn: str, account: str) -> bool:
    return arn.startswith(f"arn:aws:iam::{account}:") or arn.startswith(f"arn:aws:sts::{account}:")


def _attestation_context(pcrs: Mapping[int, bytes] | None) -> dict[str, str]:
    if pcrs is None:
        return {}
    context = {f"kms:RecipientAttestation:PCR{i}": value.hex() for i, value in pcrs.items()}
    if 0 in pcrs:
        context["kms:RecipientAttestation:ImageSha384"] = pcrs[0].hex()
    return context


def allowed(
    statements: Sequence[Statement],
    *,
    principal: str,
    account: str,
    action: str,
    pcrs: Mapping[int, bytes] | None,
) -> bool:
    context = _attestation_context(pcrs)
    matching = [
        s
        for s in statements
        if s.applies(principal, account, action) and all(c.holds(context) for c in s.conditions)
    ]
    if any(s.effect == "Deny" for s in matching):
        return False
    return any(s.effect == "Allow" for s in matching)


class PolicyDenied(PolicyError):
    """The key policy does not allow this principal, action and attestation."""


class KeyPolicyGate:
    """The verifier's policy step: the key policy decides, on the verified PCRs.

    It constrains PCRs exactly as much as the key policy does (`kms:RecipientAttestation:*`
    conditions); a policy without such conditions lets any authentic enclave through, which is
    what that policy says.
    """

    checks_pcrs = True

    def __init__(self, decide: Callable[[Mapping[int, bytes]], bool]) -> None:
        self._decide = decide

    def verify(self, doc: VerifiedDocument, at: _dt.datetime) -> None:
        if not self._decide(doc.pcrs):
            raise PolicyDenied("the key policy does not allow this enclave", code="kms.denied")


# --- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    arn: str
    credentials: Credentials


@dataclass(frozen=True)
class DoubleKey:
    key_id: str
    arn: str
    aliases: tuple[str, ...]
    material: bytes = field(repr=False)
    enabled: bool
    policy: tuple[Statement, ...]


@dataclass(frozen=True)
class DoubleConfig:
    region: str
    account: str
    principals: Mapping[str, Principal]
    keys: Mapping[str, DoubleKey]
    generate_random_policy: tuple[Statement, ...] | None = None
    max_attestation_age: _dt.timedelta = _dt.timedelta(minutes=5)

    @classmethod
    def load(cls, path: Path) -> DoubleConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DoubleConfigError(f"{path}: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> DoubleConfig:
        if not isinstance(raw, dict):
            raise DoubleConfigError("the config must be a JSON object")
        region = raw.get("region")
        account = raw.get("account")
        if not isinstance(region, str) or not isinstance(account, str) or not account.isdigit():
            raise DoubleConfigError("region (string) and account (digits) are required")
        principals = {}
        for i, p in enumerate(raw.get("principals", [])):
            try:
                creds = Credentials(
                    p["access_key_id"], p["secret_access_key"], p.get("session_token")
                )
                principals[creds.access_key_id] = Principal(str(p["arn"]), creds)
            except (KeyError, TypeError) as exc:
                raise DoubleConfigError(f"principals[{i}]: {exc}") from None
        keys = {}
        for i, k in enumerate(raw.get("keys", [])):
            where = f"keys[{i}]"
            try:
                key_id = str(uuid.UUID(k["key_id"]))
                material = bytes.fromhex(k["material"])
                statements = k["policy"]["Statement"]
            except (KeyError, TypeError, ValueError) as exc:
                raise DoubleConfigError(f"{where}: {exc!r}") from None
            if len(material) != 32:
                raise DoubleConfigError(f"{where}: material must be 32 bytes (64 hex digits)")
            keys[key_id] = DoubleKey(
                key_id=key_id,
                arn=f"arn:aws:kms:{region}:{account}:key/{key_id}",
                aliases=tuple(k.get("aliases", ())),
                material=material,
                enabled=bool(k.get("enabled", True)),
                policy=tuple(
                    Statement.parse(s, f"{where}.Statement[{j}]")
                    for j, s in enumerate(_list(statements, where))
                ),
            )
        random_policy = raw.get("generate_random_policy")
        return cls(
            region=region,
            account=account,
            principals=principals,
            keys=keys,
            generate_random_policy=None
            if random_policy is None
            else tuple(
                Statement.parse(s, f"generate_random_policy[{j}]")
                for j, s in enumerate(_list(random_policy, "generate_random_policy"))
            ),
            max_attestation_age=_dt.timedelta(
                seconds=float(raw.get("max_attestation_age_seconds", 300))
            ),
        )

    def find_key(self, key_id: str) -> DoubleKey:
        """By key id, key ARN, alias name or alias ARN, as KMS accepts them."""
        for key in self.keys.values():
            alias_arns = {f"arn:aws:kms:{self.region}:{self.account}:{a}" for a in key.aliases}
            if key_id in (key.key_id, key.arn) or key_id in key.aliases or key_id in alias_arns:
                return key
        raise NotFoundException(f"Key '{key_id}' does not exist")


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DoubleConfigError(f"{where}: expected a list of statements")
    return value
