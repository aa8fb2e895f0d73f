"""`python -m attestation`: the `nitro-attest` command (see `attestation._cli`)."""

import sys

from attestation._cli import main

if __name__ == "__main__":
    sys.exit(main())
