# crev: `make demo` runs the pipeline locally, `make test` runs every check.
# Both build their own virtualenv in .venv; nothing is installed system-wide.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
MPY_LIB_STAMP := firmware/lib/.fetched
SITE = $$($(CURDIR)/$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MPY_STUBS := $(VENV)/micropython-stubs
# The charting library of the dashboard and the market page, from npm (package.json),
# copied into the packages so the pages (and a wheel built after this) can serve it; git-ignored.
VENDOR := ingest/crev_ingest/dashboard/static/vendor
MARKET_VENDOR := market/crev_market/static/vendor
VENDOR_FILES := $(foreach dir,$(VENDOR) $(MARKET_VENDOR),$(dir)/uPlot.iife.min.js $(dir)/uPlot.min.css $(dir)/uPlot.LICENSE)

.PHONY: demo test lint typecheck typecheck-firmware pytest bench vendor clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "crev needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 18+ and npm (apt-get install nodejs npm)"; exit 2; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

vendor: $(VENDOR_FILES)

$(VENDOR)/uPlot.LICENSE: $(NODE_STAMP)
	mkdir -p $(VENDOR)
	cp node_modules/uplot/LICENSE $@

$(VENDOR)/%: $(NODE_STAMP)
	mkdir -p $(VENDOR)
	cp node_modules/uplot/dist/$* $@

$(MARKET_VENDOR)/uPlot.LICENSE: $(NODE_STAMP)
	mkdir -p $(MARKET_VENDOR)
	cp node_modules/uplot/LICENSE $@

$(MARKET_VENDOR)/%: $(NODE_STAMP)
	mkdir -p $(MARKET_VENDOR)
	cp node_modules/uplot/dist/$* $@

# MicroPython libraries for the firmware (umqtt.simple), pinned, from PyPI.
$(MPY_LIB_STAMP): firmware/fetch_libs.py $(STAMP)
	$(BIN)/python firmware/fetch_libs.py firmware/lib
	touch $@

# The main job: the whole pipeline on this machine, on simulated meters.
# STORE=postgres: the ledger on PostgreSQL (CREV_DEMO_POSTGRES_URL, else a server started for the demo).
STORE ?= sqlite
# npm is optional here: without it the dashboard draws its charts without uPlot.
demo: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory vendor; \
	else echo "npm is missing: the dashboard's charts fall back to plain SVG (apt-get install npm for uPlot)"; fi
	$(BIN)/crev demo --store $(STORE)

test: lint typecheck typecheck-firmware pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# MicroPython's own stubs (its hashlib, its stdlib) for mypy, one folder per port: the
# stub packages put their modules at the top of site-packages, where one port's
# hashlib.pyi or time.pyi overwrites the other's. So each port's package is installed
# again, at the version pyproject.toml pinned into the venv, into a folder of its own.
STUB_VERSION = $$($(BIN)/python -c 'from importlib.metadata import version; print(version("$(1)"))')

$(MPY_STUBS)/%/.installed: $(STAMP)
	rm -rf $(@D)
	$(BIN)/python -m pip install --quiet --no-deps --target $(@D) \
	  "micropython-$*-stubs==$(call STUB_VERSION,micropython-$*-stubs)" \
	  "micropython-stdlib-stubs==$(call STUB_VERSION,micropython-stdlib-stubs)"
	touch $@

# The portable core and dgc/ against the WebAssembly port's stubs (the port the tests run them on);
# the board's code, main.py and dgc/, against the ESP32 port's (machine, network, ntptime).
MPY_MYPY = cd firmware && MYPYPATH=$(CURDIR)/$(MPY_STUBS)/$(1) $(CURDIR)/$(BIN)/mypy \
	--config-file mypy-micropython.ini --custom-typeshed-dir $(CURDIR)/$(MPY_STUBS)/$(1)

typecheck-firmware: $(MPY_STUBS)/webassembly/.installed $(MPY_STUBS)/esp32/.installed
	$(call MPY_MYPY,webassembly) -p crev -p dgc
	$(call MPY_MYPY,esp32) main.py dgc

# Two processes, a test file each at a time (a file's fixtures stay in one process): the suite
# spends much of its time waiting on real brokers, servers and SIGKILLed services. Files go out
# in the order tests/conftest.py gives them, the longest first, not by their number of tests.
PYTEST_WORKERS ?= 2
pytest: $(STAMP) $(NODE_STAMP) $(VENDOR_FILES) $(MPY_LIB_STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP) $(NODE_STAMP) $(VENDOR_FILES) $(MPY_LIB_STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) node_modules $(VENDOR) $(MARKET_VENDOR) firmware/lib .pytest_cache .mypy_cache .ruff_cache .hypothesis
