# The two commands of the README's first screen: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run serve test lint format system-deps bench assets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

## assets: the dashboard's browser files (Uppy for "Upload a bag", a streaming sha256) from npm, pinned by
## dashboard/assets/package-lock.json, into dashboard/static/vendor/ (git-ignored; no CDN at run time)
ASSET_FILES := $(addprefix dashboard/static/vendor/,uppy.min.js uppy.min.css sha256.min.js)
assets: $(ASSET_FILES)
# Run as a script: it needs only the standard library (not Flask, which importing the package would).
$(ASSET_FILES) &: dashboard/assets/package-lock.json dashboard/vendor.py
	bash scripts/install-system-deps.sh node npm
	$(PYTHON) dashboard/vendor.py

## run: the whole demo on the embedded default (SQLite + local disk, no other service):
## upload server + dashboard on 127.0.0.1:8080 and a simulated robot recording and uploading (scripts/demo.py)
run: $(VENV)/.runtime assets
	$(BIN)/python scripts/demo.py

## serve: only the upload server
serve: $(VENV)/.runtime assets
	$(BIN)/python upload_server.py

system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# tus-js-client, the Node tus client the tus tests drive (tests/tus/js, node_modules not committed).
TUS_JS := tests/tus/js/node_modules/tus-js-client/package.json
$(TUS_JS): tests/tus/js/package.json tests/tus/js/package-lock.json
	cd tests/tus/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## test: installs everything the suite needs (Debian packages, npm packages included) and runs it,
## on TEST_WORKERS pytest-xdist processes (most tests wait on real servers; a file stays on one worker)
TEST_WORKERS ?= 2
test: system-deps $(VENV)/.dev $(TUS_JS) assets lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis dashboard/assets/node_modules dashboard/static/vendor
