"""The verifier service: attestation verification over HTTP (`nitro-attest serve`).

A stateless Starlette app: any language can `POST /v1/verify` a document and get the verified
fields back as JSON, under a policy *named* in the server's config (clients never choose PCRs or
trust roots). Scale out by running more copies behind any load balancer; the only state is each
process's chain cache (docs/deployment.md).

```
POST /v1/verify?policy=NAME[&nonce=HEX][&at=RFC3339]   Content-Type: application/cbor, raw bytes
POST /v1/verify   Content-Type: application/json   {"document": base64, "policy": NAME,
                                                    "nonce": hex?, "at": RFC3339?}
  200 verified fields | 422 {"code", "reason"} the document fails verification
  400 malformed request | 413 body over the limit | 415 other content type
GET /healthz    GET /metrics (Prometheus text)    GET /openapi.json
```

`at` (a client-chosen verification time) is refused unless the config sets
`allow_at_override = true`: it lets a caller verify an expired document at its own time, which
is what audits and tests need and what production must not allow.

```python
from attestation.service import create_app, load_config
app = create_app(load_config("service.toml"))      # any ASGI server; or `nitro-attest serve`
```

Modules: `_config` (the TOML config, importable without Starlette), `_cli` (`nitro-attest
serve`, likewise), `_app` (the ASGI app; imports Starlette), `_openapi`, `_metrics`, `_wire`.
The app's names are loaded on first use, so that `nitro-attest inspect`/`verify` and `serve
--check` work on an installation without the `service` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attestation.service._cli import add_serve_parser, run_serve, serve_main
from attestation.service._config import (
    CONFIG_ENV,
    ConfigError,
    PolicyConfig,
    ServiceConfig,
    load_config,
    parse_config,
)
from attestation.service._wire import API_VERSION

if TYPE_CHECKING:
    from attestation.service._app import app_from_environment, configure_logging, create_app
    from attestation.service._openapi import openapi_schema

__all__ = [
    "API_VERSION",
    "CONFIG_ENV",
    "ConfigError",
    "PolicyConfig",
    "ServiceConfig",
    "add_serve_parser",
    "app_from_environment",
    "configure_logging",
    "create_app",
    "load_config",
    "openapi_schema",
    "parse_config",
    "run_serve",
    "serve_main",
]

_LAZY = {
    "app_from_environment": "attestation.service._app",
    "configure_logging": "attestation.service._app",
    "create_app": "attestation.service._app",
    "openapi_schema": "attestation.service._openapi",
}


def __getattr__(name: str) -> Any:
    # PEP 562: the Starlette-backed names are imported when first asked for (also what
    # `uvicorn --factory attestation.service:app_from_environment` does).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attestation.service' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
