"""`python -m enclave_net.kms`: see `enclave_net.kms._cli`."""

import sys

from enclave_net.kms._cli import main

sys.exit(main())
