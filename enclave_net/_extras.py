"""Optional extras: a missing third-party module becomes "install the X extra", said once.

`enclave_net` needs the `[net]` extra and `oracle_example` the `[oracle]` extra. Their package
`__init__`s load the modules that import those libraries on first use, through
`import_or_explain`, so that `import enclave_net` works on a bare install, and their console
scripts start through `run_entry_point`, which turns a missing library into one line naming
the extra and exit status 2 (as `nitro-attest serve` does for `[service]`). This module imports
nothing but the standard library.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MissingExtraError", "import_or_explain", "run_entry_point"]

#: Our own top-level packages: a missing one of these is a broken install, not a missing extra.
_OURS = frozenset(
    {"nsm", "attestation", "enclave_net", "oracle_example", "vectors", "nsm_attestation_cli"}
)
_USAGE_ERROR = 2


class MissingExtraError(ImportError):
    """A library of an optional extra is not installed."""

    def __init__(self, extra: str, missing: str) -> None:
        super().__init__(
            f"{missing} is not installed; install the {extra} extra: "
            f"pip install 'nsm-attestation[{extra}]'",
            name=missing,
        )
        self.extra = extra
        self.missing = missing


def _explained(exc: ImportError, extra: str) -> MissingExtraError | None:
    if isinstance(exc, MissingExtraError):
        # An inner package's extra (enclave_net's [net]) is part of the outer one ([oracle]).
        return MissingExtraError(extra, exc.missing)
    if (
        isinstance(exc, ModuleNotFoundError)
        and exc.name
        and exc.name.partition(".")[0] not in _OURS
    ):
        return MissingExtraError(extra, exc.name)
    return None


def import_or_explain(module: str, extra: str) -> ModuleType:
    """Import `module`; a third-party module missing on the way raises `MissingExtraError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        explained = _explained(exc, extra)
        if explained is None:
            raise
        raise explained from exc


def run_entry_point(prog: str, module: str, extra: str, argv: Sequence[str] | None) -> int:
    """Run `module.main(argv)`; a missing library of `extra`, at import or while the command
    builds its parser or runs, is one line on stderr and exit status 2, never a traceback."""
    try:
        main = import_or_explain(module, extra).main
        result: int = main(None if argv is None else list(argv))
    except ImportError as exc:
        explained = _explained(exc, extra)
        if explained is None:
            raise
        print(f"{prog}: {explained}", file=sys.stderr)
        return _USAGE_ERROR
    return result
