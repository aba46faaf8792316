# Everyday targets. `make serve` and `make test` work on a fresh clone: they create .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genmedia-installed
HOST ?= 127.0.0.1
PORT ?= 8000
GPUS ?=

.PHONY: install serve test test-unit test-integration lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the requirement range alone could resolve to a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/genmedia serve --host $(HOST) --port $(PORT) $(if $(GPUS),--gpus $(GPUS))

# `make test` runs the two stages in turn (unit first: a minute, no Ray); each says its name.
test: test-unit test-integration

test-unit: $(STAMP)
	@echo "==> unit tests (tests/unit, no Ray)"
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	@echo "==> integration tests (tests/integration on a real local Ray Serve; tests/gpu)"
	$(PY) -m pytest -q tests/integration tests/gpu
	@echo "==> ingress test (tests/ingress: a Ray of its own, started with Serve's HAProxy ingress)"
	$(PY) -m pytest -q tests/ingress

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# typecheck: mypy cannot follow the editable install's import hook, so it reads genmedia.*
	# through links named as in [tool.setuptools] package-dir ([tool.mypy] mypy_path). The
	# __init__.py: under a namespace package mypy takes a data folder (loadtests/scenarios/)
	# for the module of the same name (scenarios.py); Python does not.
	mkdir -p build/mypy-path/genmedia
	touch build/mypy-path/genmedia/__init__.py
	for pkg in deployments models autoscaling infra loadtests client; do \
		ln -sfn ../../../$$pkg build/mypy-path/genmedia/$$pkg; done
	ln -sfn ../../../genmedia_kernels build/mypy-path/genmedia/kernels
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/bench_serving.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
