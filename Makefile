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
# npm is optional here: without it the dashboard draws its charts without uPlot.
demo: $(STAMP)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory vendor; \
	else echo "npm is missing: the dashboard's charts fall back to plain SVG (apt-get install npm for uPlot)"; fi
	$(BIN)/crev demo

test: lint typecheck typecheck-firmware pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The portable core against MicroPython's own stubs (its hashlib, its stdlib),
# staged in one folder because mypy takes them as a custom typeshed.
typecheck-firmware: $(STAMP)
	rm -rf $(MPY_STUBS) && mkdir -p $(MPY_STUBS)
	cd $(SITE) && for record in micropython_webassembly_stubs-*.dist-info/RECORD micropython_stdlib_stubs-*.dist-info/RECORD; do \
	  cut -d, -f1 $$record | grep '\.pyi$$' | grep -v '^stdlib/' | while read -r stub; do \
	    mkdir -p "$(CURDIR)/$(MPY_STUBS)/$$(dirname $$stub)" && cp "$$stub" "$(CURDIR)/$(MPY_STUBS)/$$stub"; \
	  done; done
	cd firmware && MYPYPATH=$(CURDIR)/$(MPY_STUBS) $(CURDIR)/$(BIN)/mypy --config-file mypy-micropython.ini \
	  --custom-typeshed-dir $(SITE) -p crev -p dgc

pytest: $(STAMP) $(NODE_STAMP) $(VENDOR_FILES) $(MPY_LIB_STAMP)
	$(BIN)/pytest

bench: $(STAMP) $(NODE_STAMP) $(VENDOR_FILES) $(MPY_LIB_STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) node_modules $(VENDOR) $(MARKET_VENDOR) firmware/lib .pytest_cache .mypy_cache .ruff_cache .hypothesis
