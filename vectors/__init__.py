"""The conformance corpus generator (`vectors/generate.py`); see vectors/README.md."""
