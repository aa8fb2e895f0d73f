#!/usr/bin/env bash
# Start the oracle enclave in PRODUCTION mode: no --debug-mode. In debug mode every PCR reads as
# zero, attestations prove nothing, and the oracle refuses to boot (docs/deployment.md).
#
#   oracle_example/deploy/run-enclave.sh [EIF] [CID]
# The gateway unit forwards tcp:127.0.0.1:8080 to vsock:CID:5000, so keep CID in step with it.
set -euo pipefail

eif="${1:-build/enclave/nitro-oracle.eif}"
cid="${2:-16}"
cpus="${NITRO_ORACLE_CPUS:-2}"
memory="${NITRO_ORACLE_MEMORY_MIB:-1024}"

for arg in "$@"; do
  if [ "$arg" = "--debug-mode" ]; then
    echo "refusing --debug-mode: PCRs would be zero and the oracle would not boot" >&2
    exit 2
  fi
done

nitro-cli run-enclave --eif-path "$eif" --cpu-count "$cpus" --memory "$memory" --enclave-cid "$cid"
nitro-cli describe-enclaves
