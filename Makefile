# Two commands for everyone:
#   make run    - set up, build (or reuse) the demo model and index, serve http://localhost:8000
#   make check  - set up, then ruff, mypy and the whole test suite
VENV ?= .venv
PYTHON ?= python3.11
FAISS_EXTRA ?= cpu
# The slide viewer's OpenSeadragon, built from viewer/package-lock.json (never committed).
VIEWER := service/static/vendor/openseadragon/openseadragon.min.js

.PHONY: run check install lint typecheck test test-fast benchmark benchmark-quality clean-demo \
	vendor-viewer

$(VENV)/.installed: pyproject.toml scripts/bootstrap
	VENV=$(VENV) PYTHON=$(PYTHON) FAISS_EXTRA=$(FAISS_EXTRA) scripts/bootstrap
	touch $@

# Without npm, `make run` still serves (without the viewer); scripts/check (CI) insists on it.
$(VIEWER): viewer/package.json viewer/package-lock.json scripts/vendor-viewer
	scripts/vendor-viewer --force || echo "make: the slide viewer is not built; the service runs without it"

install: $(VENV)/.installed $(VIEWER)

run: install
	$(VENV)/bin/histosearch demo

check: install
	VENV=$(VENV) scripts/check

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest

# The edit loop: everything but tests over 30 s, the browser, Ray and the Docker deployment.
test-fast: install
	$(VENV)/bin/pytest -m "not slow and not browser and not ray and not deploy"

# Machine-comparable speed figures, minutes per script, no training (benchmarks/README.md).
benchmark: install
	$(VENV)/bin/python -m benchmarks.indexer.goals
	$(VENV)/bin/python -m benchmarks.indexer.slides
	$(VENV)/bin/python -m benchmarks.service.service_load
	$(VENV)/bin/python -m benchmarks.service.service_hardening
	$(VENV)/bin/python -m benchmarks.service.region_query

# Retrieval quality on held-out groups: trains models, hours on a CPU.
benchmark-quality: install
	$(VENV)/bin/python -m benchmarks.quality.retrieval
	$(VENV)/bin/python -m benchmarks.quality.supervised_ceiling

# Rebuild OpenSeadragon (pinned in viewer/package-lock.json) into service/static/vendor/ (npm ci).
vendor-viewer:
	scripts/vendor-viewer --force

clean-demo:
	rm -rf var/demo
