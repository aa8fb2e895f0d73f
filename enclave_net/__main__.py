"""`python -m enclave_net` and the `enclave-net` console script (see `enclave_net._cli`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from enclave_net._extras import run_entry_point


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry_point("enclave-net", "enclave_net._cli", "net", argv)


if __name__ == "__main__":
    sys.exit(main())
