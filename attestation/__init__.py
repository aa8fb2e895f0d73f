"""AWS Nitro Enclaves attestation documents: parse, verify against the pinned AWS root, build."""

from __future__ import annotations

__all__: list[str] = []
