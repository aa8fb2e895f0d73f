"""`nitro-attest serve`: the argparse wiring, importable without the `service` extra.

`attestation._cli` adds the subcommand with `add_serve_parser(subparsers)`; only running it
imports Starlette and uvicorn, so `nitro-attest inspect` and `verify` work on an installation
without them, and `serve` then says which extra is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from attestation.service._config import ConfigError, load_config

__all__ = ["add_serve_parser", "run_serve", "serve_main"]

_log = logging.getLogger("attestation.service")
# Exit status for a usage or configuration error, as for the other nitro-attest subcommands.
_USAGE_ERROR = 2


def add_serve_parser(subparsers: Any) -> None:
    """Add `serve` to an argparse subparsers object (from `add_subparsers`); sets `handler`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the HTTP verifier service",
        description="Verify attestation documents over HTTP under policies named in a TOML "
        "config (see attestation/service.example.toml and docs/deployment.md).",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="override [service] listen from the config"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config, print a summary and exit"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Validate the config, then serve until interrupted. Exit 2 on a config error."""
    try:
        config = load_config(args.config, listen=args.listen)
    except ConfigError as exc:
        print(f"nitro-attest serve: config error: {exc}", file=sys.stderr)
        return _USAGE_ERROR
    roots = "pinned AWS root" if config.uses_aws_root else "custom roots only"
    summary = (
        f"config ok: {len(config.policies)} policies ({', '.join(sorted(config.policies))}), "
        f"{len(config.roots)} trust root(s) ({roots}), listen {config.host}:{config.port}, "
        f"body limit {config.max_body_bytes} bytes, up to {config.max_connections} connections, "
        f"head/body deadlines {config.head_timeout:g}/{config.body_timeout:g} s, at override "
        f"{'ENABLED' if config.allow_at_override else 'off'}"
    )
    if args.check:
        print(summary)
        return 0
    try:
        from attestation.service._app import configure_logging, create_app
        from attestation.service._server import serve
    except ImportError as exc:
        print(
            f"nitro-attest serve: {exc.name} is not installed; "
            "install the service extra: pip install 'nsm-attestation[service]'",
            file=sys.stderr,
        )
        return _USAGE_ERROR
    configure_logging()
    _log.info("%s", summary)
    if config.allow_at_override:
        _log.warning("allow_at_override is on: clients may verify at any time they choose")
    serve(create_app(config), config)
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    """`nitro-attest serve` as a standalone entry point (`python -m attestation.service`)."""
    parser = argparse.ArgumentParser(prog="nitro-attest")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return run_serve(args)
