"""Tests of the conformance corpus in vectors/."""
