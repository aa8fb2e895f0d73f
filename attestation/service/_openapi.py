"""The OpenAPI 3.0 description of the service (`GET /openapi.json`) with the policy names."""

from __future__ import annotations

from typing import Any

from attestation.service._config import ServiceConfig
from attestation.service._wire import API_VERSION, CBOR, JSON, MAX_NONCE_BYTES

__all__ = ["openapi_schema"]


def openapi_schema(config: ServiceConfig) -> dict[str, Any]:
    """The OpenAPI 3.0 description of the service, with the configured policy names."""
    names = sorted(config.policies)
    nonce = {
        "type": "string",
        "pattern": f"^(?:[0-9a-fA-F]{{2}}){{1,{MAX_NONCE_BYTES}}}$",
        "description": "Expected nonce, hex; the document must carry exactly this nonce.",
    }
    policy = {
        "type": "string",
        "enum": names,
        "description": "A policy named in the server config.",
    }
    parameters: list[dict[str, Any]] = [
        {
            "name": "policy",
            "in": "query",
            "required": False,
            "schema": policy,
            "description": "Required with application/cbor. With JSON, every field is in the "
            "body and the query must be empty.",
        },
        {"name": "nonce", "in": "query", "required": False, "schema": nonce},
    ]
    properties: dict[str, Any] = {
        "document": {"type": "string", "format": "byte"},
        "policy": policy,
        "nonce": nonce,
    }
    # `at` is only part of the API of a service configured for audits (allow_at_override);
    # elsewhere it is an unknown field, refused with 400.
    if config.allow_at_override:
        at = {
            "type": "string",
            "format": "date-time",
            "description": "Verification time (RFC 3339) instead of the server's clock.",
        }
        parameters.append({"name": "at", "in": "query", "required": False, "schema": at})
        properties["at"] = at
    # The one error shape of every command and of this service (docs/schemas/error.schema.json).
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "verified": {"type": "boolean", "enum": [False]},
            "policy": {"type": "string"},
            "error": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "message", "hint"],
                "properties": {
                    "code": {"type": "string", "description": "Stable error code."},
                    "message": {"type": "string"},
                    "hint": {
                        "type": "string",
                        "nullable": True,
                        "description": "What to do about it, when there is something to do.",
                    },
                },
            },
        },
    }
    hex_or_null = {"type": "string", "nullable": True, "pattern": "^(?:[0-9a-f]{2})*$"}
    # RFC 3339 in UTC with milliseconds, as every time in the results.
    utc_ms = {
        "type": "string",
        "format": "date-time",
        "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
    }
    verified = {
        "type": "object",
        "required": [
            "verified",
            "policy",
            "verified_at",
            "module_id",
            "timestamp",
            "timestamp_ms",
            "digest",
            "debug",
            "pcrs",
            "public_key",
            "user_data",
            "nonce",
            "certificates",
        ],
        "properties": {
            "verified": {"type": "boolean", "enum": [True]},
            "policy": {"type": "string"},
            "verified_at": utc_ms,
            "module_id": {"type": "string"},
            "timestamp": utc_ms,
            "timestamp_ms": {"type": "integer"},
            "digest": {"type": "string"},
            "debug": {"type": "boolean"},
            "pcrs": {"type": "object", "additionalProperties": {"type": "string"}},
            "public_key": hex_or_null,
            "user_data": hex_or_null,
            "nonce": hex_or_null,
            "certificates": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "subject",
                        "issuer",
                        "serial",
                        "not_before",
                        "not_after",
                        "sha256",
                    ],
                    "properties": {
                        **{key: {"type": "string"} for key in ("subject", "issuer", "serial")},
                        "not_before": utc_ms,
                        "not_after": utc_ms,
                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    },
                },
            },
        },
    }

    def answer(description: str, schema: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Nitro attestation verifier",
            "version": API_VERSION,
            "description": "Verifies AWS Nitro Enclaves attestation documents against the "
            "server's trust roots under policies named in the server's config.",
        },
        "paths": {
            "/v1/verify": {
                "post": {
                    "operationId": "verify",
                    "summary": "Verify an attestation document under a named policy.",
                    "parameters": parameters,
                    "requestBody": {
                        "required": True,
                        "content": {
                            CBOR: {"schema": {"type": "string", "format": "binary"}},
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["document", "policy"],
                                    "properties": properties,
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": answer("The document verified; its fields.", "Verified"),
                        "400": answer("Malformed request.", "Error"),
                        "413": answer(
                            f"Body over the limit ({config.max_body_bytes} bytes).", "Error"
                        ),
                        "415": answer("Content type other than CBOR or JSON.", "Error"),
                        "422": answer("The document fails verification; stable code.", "Error"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "responses": {
                        "200": {
                            "description": "Serving.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": {"Verified": verified, "Error": error}},
    }
