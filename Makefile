# Quick start: `make serve` (install, build the cpu model repository, serve) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
# Address of the public ports: 127.0.0.1 by default; BIND=0.0.0.0 opens them to the network.
BIND ?= 127.0.0.1
PYTEST_ARGS ?=

.PHONY: install render serve test lint unit integration bench soak evaluate

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml build/install.sh
	bash build/install.sh $(VENV)
	touch $@

render: install
	$(PY) build/render.py --profile $(PROFILE)

serve: install
	$(PY) build/serve.py --profile $(PROFILE) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) --bind $(BIND)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

integration: install
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/serving_bench.py --out var/bench

# Load and soak: concurrency 16 on smoothguard for 10 minutes, zero failures, RSS growth < 10%
# (SOAK_ARGS=--ci for the one-minute version).
soak: install
	$(PY) benchmarks/soak.py --out var/soak $(SOAK_ARGS)

evaluate: install
	$(PY) -m smoothguard.evaluation --out var/eval
