# The two commands of the README: `make demo` and `make test`. Both set up what they need first.
# The interpreter the virtual environment is made from (`make PY=...` to choose): by default the
# distribution's CPython when it is 3.11 or newer, else the first python3 on PATH. Debian's is
# built with PGO and LTO into a statically linked interpreter; a source build with a shared
# libpython and no PGO (pyenv's default) ran the ledger bench slower in 13 of 17 alternating
# pairs (means 3188 against 3401 tx/s), with about 8 % more replica CPU per transaction.
PY ?=
SYSTEM_PY := /usr/bin/python3
NEW_ENOUGH := import sys; assert sys.version_info >= (3, 11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The ledger's batch signature check (ledger/native/): Go with filippo.io/edwards25519, from
# Debian's golang-go and golang-filippo-edwards25519-dev (GOPATH mode over Debian's Go sources;
# `make GO_PATH=...` for another tree). Where it cannot be built the replicas check signatures
# one by one: the same verdicts, about twice the CPU.
NATIVE := ledger/native/libwattmesh_ed25519.so
GO_PATH ?= /usr/share/gocode
GO_LIB := $(GO_PATH)/src/filippo.io/edwards25519

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml package.json
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); pkgs=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || pkgs="mosquitto"; \
	command -v go >/dev/null 2>&1 || pkgs="$$pkgs golang-go"; \
	test -d $(GO_LIB) || pkgs="$$pkgs golang-filippo-edwards25519-dev"; \
	if [ -z "$(PY)" ] && $(SYSTEM_PY) -c '$(NEW_ENOUGH)' 2>/dev/null \
		&& ! $(SYSTEM_PY) -c 'import ensurepip, venv' 2>/dev/null; then pkgs="$$pkgs python3-venv"; fi; \
	if [ -n "$$pkgs" ]; then \
		echo "installing from apt:$$pkgs"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$pkgs >/dev/null; fi
	@py="$(PY)"; if [ -z "$$py" ]; then py=python3; \
		$(SYSTEM_PY) -c '$(NEW_ENOUGH); import ensurepip, venv' 2>/dev/null && py=$(SYSTEM_PY); fi; \
	echo "making $(VENV) with $$py ($$($$py --version))"; $$py -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

$(NATIVE): ledger/native/ed25519_batch.go $(STAMP)
	@if command -v go >/dev/null 2>&1 && test -d $(GO_LIB); then \
		echo "building $@"; \
		GOPATH=$(GO_PATH) GO111MODULE=off GOFLAGS= GOCACHE=$(CURDIR)/build/go-cache \
			go build -buildmode=c-shared -o $@ $< && rm -f $(@:.so=.h); \
	else echo "not building $@ (no go or no $(GO_LIB)): signatures are checked one by one"; fi

setup: $(STAMP) $(NATIVE)

demo: $(STAMP) $(NATIVE)
	$(BIN)/wattmesh demo --out demo-out $(ARGS)

test: $(STAMP) $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) node_modules demo-out build $(NATIVE)
