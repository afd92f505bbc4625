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

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml package.json
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); pkgs=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || pkgs="mosquitto"; \
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

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/wattmesh demo --out demo-out $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) node_modules demo-out
