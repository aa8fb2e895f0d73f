"""The corpus cases: one function per case, one module per family.

A case is a function decorated with `@case`, in the module of its family (`valid.py`,
`envelope.py`, `payload.py`, `chain.py`, `signature.py`, `policy.py`, `nitrotpm.py`). Its id is
`<family>/<function name with _ as ->`, its description is its docstring (whitespace folded),
and it returns the document's bytes (or `Built` when it also brings its own trust roots):

    @case("envelope.tag")
    def tag_18_twice(w: World) -> bytes:
        \"\"\"Tag 18 applied twice.\"\"\"
        return encode(Tag(18, Tag(18, Raw(w.document))))

One rule tried on several inputs is one function with `variants=`: each `Variant` names its
case, passes its `args` to the function, and fills the `{placeholders}` of the docstring.
Cases appear in the manifest in definition order, families in `FAMILIES` order.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import EllipsisType
from typing import Any

from vectors.cases._world import AT, DEFAULT_POLICY, ROOT_FILE, World, make_world
from vectors.corpus import PolicySpec

__all__ = [
    "FAMILIES",
    "Built",
    "Generated",
    "Variant",
    "build_cases",
    "case",
    "variant",
]

#: Case families, in manifest order. `valid` holds the baseline shapes; valid cases that belong
#: to a topic (high-S twins, the foreign root in `cabundle[0]`) live in that topic's family.
FAMILIES = ("valid", "envelope", "payload", "chain", "signature", "policy", "nitrotpm")


@dataclass(frozen=True)
class Built:
    """A document together with the root files its case trusts instead of the synthetic root."""

    document: bytes
    roots: Mapping[str, bytes]


@dataclass(frozen=True)
class Variant:
    """One case of a multi-case function: its name, the function's arguments, its error."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    error: str | EllipsisType | None = ...
    """The expected error code if it differs from the decorator's (`...`: it does not)."""


def variant(name: str, *, error: str | EllipsisType | None = ..., **args: Any) -> Variant:
    """A `Variant` named `name` whose function gets `args` (which the docstring may use)."""
    return Variant(name, args, error)


@dataclass(frozen=True)
class Generated:
    """One generated case: the document and what the manifest says about it."""

    id: str
    description: str
    document: bytes
    error_code: str | None
    """None when the document must verify."""
    at: datetime = AT
    roots: tuple[str, ...] = (ROOT_FILE,)
    policy: PolicySpec = DEFAULT_POLICY

    @property
    def family(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def path(self) -> str:
        return f"{self.id}.cbor"

    def to_json(self) -> dict[str, object]:
        expected: dict[str, object] = {"valid": self.error_code is None}
        if self.error_code is not None:
            expected["error_code"] = self.error_code
        return {
            "id": self.id,
            "family": self.family,
            "description": self.description,
            "document": self.path,
            "document_sha256": hashlib.sha256(self.document).hexdigest(),
            "at": _iso(self.at),
            "roots": list(self.roots),
            "policy": self.policy.to_json(),
            "expected": expected,
        }


def _iso(instant: datetime) -> str:
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


Builder = Callable[..., bytes | Built]


@dataclass(frozen=True)
class _Definition:
    family: str
    function: Builder
    error: str | None
    policy: PolicySpec
    at: datetime
    variants: tuple[Variant, ...]

    def generate(self, world: World) -> list[tuple[Generated, Mapping[str, bytes]]]:
        """This definition's cases, each with the root files it brings."""
        doc = inspect.getdoc(self.function)
        if not doc:
            raise ValueError(f"{self.function.__qualname__}: a case needs a docstring")
        if not self.variants:
            name = self.function.__name__.replace("_", "-")
            return [self._one(name, " ".join(doc.split()), self.error, self.function(world))]
        return [
            self._one(
                v.name,
                " ".join(doc.format(**v.args).split()),
                self.error if isinstance(v.error, EllipsisType) else v.error,
                self.function(world, **v.args),
            )
            for v in self.variants
        ]

    def _one(
        self, name: str, description: str, error: str | None, out: bytes | Built
    ) -> tuple[Generated, Mapping[str, bytes]]:
        document, roots = (out, {}) if isinstance(out, bytes) else (out.document, out.roots)
        generated = Generated(
            id=f"{self.family}/{name}",
            description=description,
            document=document,
            error_code=error,
            at=self.at,
            roots=tuple(roots) or (ROOT_FILE,),
            policy=self.policy,
        )
        return generated, roots


_REGISTRY: list[_Definition] = []


def case(
    error: str | None,
    *,
    policy: PolicySpec = DEFAULT_POLICY,
    at: datetime = AT,
    variants: Sequence[Variant] = (),
) -> Callable[[Builder], Builder]:
    """Register the decorated function as a case (or one case per variant).

    `error` is the error code a correct verifier reports, or None for a valid document;
    `policy` and `at` default to the baseline policy and verification time.
    """

    def register(function: Builder) -> Builder:
        family = function.__module__.rsplit(".", 1)[-1]
        if family not in FAMILIES:
            raise ValueError(f"{function.__module__}: not a case family module")
        _REGISTRY.append(_Definition(family, function, error, policy, at, tuple(variants)))
        return function

    return register


def build_cases() -> tuple[list[Generated], dict[str, bytes]]:
    """Every case, in manifest order, and the root PEM files they reference."""
    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")
    world = make_world()
    roots: dict[str, bytes] = {ROOT_FILE: world.pki.root_pem()}
    cases: list[Generated] = []
    for family in FAMILIES:
        for definition in (d for d in _REGISTRY if d.family == family):
            for generated, own_roots in definition.generate(world):
                cases.append(generated)
                roots.update(own_roots)
    return cases, roots
