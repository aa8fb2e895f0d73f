"""`python -m oracle_example` and the `nitro-oracle` console script (see `oracle_example._cli`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from enclave_net._extras import run_entry_point


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry_point("nitro-oracle", "oracle_example._cli", "oracle", argv)


if __name__ == "__main__":
    sys.exit(main())
