# The two commands a new user needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs; run as root, each also installs Debian packages
# with apt-get (DEB_PACKAGES below; `make deps` alone does just that, and says what it installs).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Solidity compiler (solcjs) and the local EVM (anvil) come from npm, pinned by
# package-lock.json; `npm ci --ignore-scripts` installs exactly the locked versions (anvil's
# binary is its locked platform package, so no install script has to fetch anything).
NODE_STAMP := node_modules/.installed
# Debian packages the tests use: a C compiler for the LD_PRELOAD shim, iproute2 for network
# namespaces (and util-linux's unshare), socat for rebuilding the previous team's broken DNS
# chain, libfaketime for peers that only verify at wall-clock time.
DEB_PACKAGES := gcc libc6-dev iproute2 util-linux socat faketime
# `make test-kernel` also builds QEMU (its NSM device needs libcbor and gnutls) and boots a
# busybox initramfs on SeaBIOS with QEMU's firmware data; cpio, kmod and xz build the initramfs.
KERNEL_DEB_PACKAGES := gcc ninja-build pkg-config python3-venv libglib2.0-dev libpixman-1-dev \
  libcbor-dev libgnutls28-dev libfdt-dev flex bison busybox-static seabios qemu-system-data \
  cpio kmod xz-utils debian-archive-keyring

.PHONY: demo demo-nsm test test-kernel test-lowest test-newest lint typecheck pytest bench deps deps-kernel clean

$(NODE_STAMP): package.json package-lock.json
	@if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: nodejs npm"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else \
	    echo "node and npm are missing: install Debian's nodejs and npm (or run as root)"; exit 1; \
	  fi; \
	fi
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Installs the Debian packages of $(1) that are missing (as root; otherwise it lists them and
# says $(2)).
define install_debs
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then \
    echo "installing Debian packages:$$missing"; \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
  else \
    echo "missing Debian packages:$$missing (run as root, or install them; $(2))"; \
  fi; \
fi
endef

deps:
	@$(call install_debs,$(DEB_PACKAGES),tests that need them skip)

deps-kernel:
	@$(call install_debs,$(KERNEL_DEB_PACKAGES),make test-kernel needs them)

demo: $(STAMP) $(NODE_STAMP) deps
	$(BIN)/nitro-oracle demo --out demo-out

# The NSM alone: emulator -> client -> attestation document -> verified human summary.
demo-nsm: $(STAMP)
	$(BIN)/python examples/nsm_demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(NODE_STAMP) deps
	$(BIN)/pytest

test: $(STAMP) deps lint typecheck pytest

# tests/kernel inside a VM: Debian's kernel with the real nsm.ko, QEMU's virtio-nsm device
# (docs/kernel-vm.md). QEMU and the kernel are cached outside the repository.
test-kernel: $(STAMP) deps-kernel
	tools/kernel-vm/test-kernel.sh

# The declared dependency floors and the newest releases, each in its own fresh venv made by uv
# (from PyPI; uv itself is pip-installed into .venv; --seed adds pip, which tests/packaging uses to
# build and install the wheel). Both run the suite; .ci/run runs both.
UV := $(BIN)/uv
LOWEST := .venv-lowest
NEWEST := .venv-newest
# test-newest leaves out the two cross-check libraries, which pin old releases (pycose: cbor2 < 6;
# eth-account: pycryptodome < 4, no longer ours since the oracle uses safe-pysha3), and deselects
# their tests (marker `crosscheck`): they run in `make test`. The other test tools are installed
# at their newest too.
NEWEST_TOOLS := pytest pytest-timeout hypothesis jsonschema httpx2 schemathesis packaging hatchling

$(UV): $(STAMP)
	$(BIN)/pip install --quiet uv

# Every direct requirement at its floor (tests/packaging/test_floors.py checks that none was lifted).
test-lowest: $(UV) $(NODE_STAMP) deps
	rm -rf $(LOWEST)
	$(UV) venv --quiet --seed --python $(PYTHON) $(LOWEST)
	$(UV) pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -e '.[dev]'
	NSM_LOWEST_RUN=1 $(LOWEST)/bin/pytest -p no:cacheprovider -q

test-newest: $(UV) $(NODE_STAMP) deps
	rm -rf $(NEWEST)
	$(UV) venv --quiet --seed --python $(PYTHON) $(NEWEST)
	$(UV) pip install --quiet --python $(NEWEST)/bin/python --resolution highest \
	  -e '.[oracle,service,testing,kms]' $(NEWEST_TOOLS)
	NSM_NEWEST_RUN=1 $(NEWEST)/bin/pytest -p no:cacheprovider -q -m 'not crosscheck'

# Figures land in docs/benchmarks.md and docs/conformance.md; never part of `make test`.
bench: $(STAMP) $(NODE_STAMP) deps
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/differential.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/egress.py
	$(BIN)/python bench/oracle.py
	$(BIN)/python bench/onchain.py

clean:
	rm -rf $(VENV) $(LOWEST) $(NEWEST) node_modules .mypy_cache .ruff_cache .pytest_cache
