"""Attestation vectors: the generated conformance corpus (`vectors/cases/`, written by
`vectors/generate.py`) and real AWS documents (`vectors/real/`), both read through
`vectors.corpus`; see vectors/README.md."""
