#!/usr/bin/env bash
# Build the enclave image (EIF) and record its PCRs, on the parent instance (or any machine with
# docker and nitro-cli). Prints PCR0/1/2 and writes them to pcrs.env: consumers pin these.
#
#   oracle_example/deploy/build-eif.sh [OUTPUT_DIR]
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/build/enclave}"
tag="nitro-oracle-enclave:latest"
mkdir -p "$out"
cd "$repo"

# 1. The wheel the image installs (no network needed beyond the package index for its deps).
rm -rf dist
python3 -m pip wheel --no-deps --wheel-dir dist .

# 2. The docker image, then the EIF. nitro-cli prints the measurements as JSON.
docker build --file oracle_example/deploy/Dockerfile.enclave --tag "$tag" .
nitro-cli build-enclave --docker-uri "$tag" --output-file "$out/nitro-oracle.eif" \
  | tee "$out/build-enclave.json"

# 3. PCRs for the consumer's policy (nitro-oracle get --pcr 0=... --pcr 1=... --pcr 2=...).
python3 - "$out/build-enclave.json" "$out/pcrs.env" <<'PY'
import json, sys
measurements = json.load(open(sys.argv[1]))["Measurements"]
with open(sys.argv[2], "w") as f:
    for index in (0, 1, 2):
        line = f"PCR{index}={measurements[f'PCR{index}']}"
        print(line)
        f.write(line + "\n")
PY
echo "EIF: $out/nitro-oracle.eif; PCRs: $out/pcrs.env"
