"""`python -m nsm`: the `nsm` command (see `nsm._cli`)."""

import sys

from nsm._cli import main

if __name__ == "__main__":
    sys.exit(main())
