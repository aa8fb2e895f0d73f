"""`python -m attestation.service --config FILE`: the same as `nitro-attest serve`."""

from __future__ import annotations

import sys

from attestation.service._cli import serve_main

sys.exit(serve_main())
