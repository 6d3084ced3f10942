# dittohead: `make demo` shows the whole flow, `make test` runs every test tier.
# Both bootstrap .venv themselves and, when run as root on Debian, install the system
# packages they need with apt-get.

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
# The interpreter the virtual environment is built on. The distribution's python3 comes first:
# the sshd test tier runs the receiver as real unprivileged users, who must be able to execute
# the interpreter behind .venv (a per-user install under a private home would not do).
PYTHON      ?= $(shell for c in /usr/bin/python3 python3.13 python3.12 python3.11 python3; do \
                 command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
                 && { echo $$c; break; }; done)
DEMO_DEBS   := python3-venv
TEST_DEBS   := python3-venv openssh-server openssh-client rsync systemd e2fsprogs util-linux passwd strace

.PHONY: demo test lint typecheck unit bench system-deps-demo system-deps-test clean

demo: system-deps-demo $(STAMP)
	$(VENV)/bin/dittohead-admin demo

test: system-deps-test $(STAMP) lint typecheck
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: system-deps-test $(STAMP)
	$(PY) tests/bench/run.py

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "dittohead needs Python 3.11 or newer (python3-venv on Debian)"; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

system-deps-demo:
	@sh packaging/apt-install.sh $(DEMO_DEBS)

system-deps-test:
	@sh packaging/apt-install.sh $(TEST_DEBS)

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache
