# Two commands for a newcomer:  `make demo`  and  `make test`.
# Each target installs what it needs; re-running skips finished steps (stamp files in .venv).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.bluff-installed
VIEWER  := bluff_ray/_viewer/index.html
VIEWER_SRC := $(shell find viewer/src viewer/index.html viewer/package.json viewer/vite.config.ts viewer/tsconfig.json -type f 2>/dev/null)

.PHONY: install viewer browser lint demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first: on the project machines these wheels lie on local disk (CPU or CUDA build
	# chosen by pip); pyproject only asks for ranges.
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	# torchattacks (the reference PGD in tests and bench) pins requests~=2.25 in its metadata but never
	# imports it; installing it without deps keeps the resolver from failing on that stale pin.
	$(BIN)/pip install -q --no-deps 'torchattacks>=3.5'
	touch $(STAMP)

install: $(STAMP)

viewer/node_modules/.package-lock.json: viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --no-audit --no-fund

$(VIEWER): viewer/node_modules/.package-lock.json $(VIEWER_SRC)
	cd viewer && npm run build

viewer: $(VIEWER)

# Debian Chromium for the headless browser tests (Playwright drives /usr/bin/chromium; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install viewer
	$(BIN)/bluff demo

# Lint, format and type checks (seconds; pyproject's [tool.ruff] and [tool.mypy]) before the tests.
lint: install
	$(BIN)/ruff check bluff_ray tests bench
	$(BIN)/ruff format --check bluff_ray tests bench
	$(BIN)/mypy

test: install viewer browser lint
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/pgd.py && $(BIN)/python bench/influence.py && $(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) viewer/node_modules bluff_ray/_viewer bluff-results
