"""`nitro-oracle`: the oracle's command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nitro-oracle",
        description="The reference Nitro enclave price oracle and its parent-side tools.",
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0  # pragma: no cover - every subcommand returns on its own


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
