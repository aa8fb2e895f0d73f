"""Networking for enclave apps: egress without DNS, and KMS with attestation (`enclave_net.kms`)."""
