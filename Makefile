# ExamPass: `make run` (everything), `make test`, `make train`, `make serve`, `make demo`, `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EXAMPASS_HOME ?= $(CURDIR)/.exampass
export DAGSTER_HOME ?= $(EXAMPASS_HOME)/dagster
# The Kaggle file: data/StudentsPerformance.csv, else ../shared/data/StudentsPerformance.csv; without either the
# pipeline trains on a synthetic sample and says so.
export EXAMPASS_DATA ?= $(firstword $(wildcard $(CURDIR)/data/StudentsPerformance.csv) $(wildcard $(abspath ../shared/data/StudentsPerformance.csv)) $(CURDIR)/data/StudentsPerformance.csv)
MLFLOW_URI = $${MLFLOW_TRACKING_URI:-sqlite:///$(EXAMPASS_HOME)/mlflow/mlflow.db}

.PHONY: install run train serve mlflow-ui test lint format demo bench bench-model bench-ceiling bench-serve bench-drift \
	bench-segments bench-poisoning bench-advice bench-scale backfill screenshots system-deps lock-upgrade clean

# Installs exactly what uv.lock pins (never resolves afresh). uv comes from PATH, else from the venv, else it is
# bootstrapped from PyPI into the venv at the version the lock pins; uv never downloads a Python either.
UV_LOCKED := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"/\1/p;}' uv.lock)
UV = $(or $(shell command -v uv 2>/dev/null),$(BIN)/uv)
export UV_PYTHON_DOWNLOADS := never
# Trust the machine's certificate store (as pip does), so a network with its own TLS inspection CA works too.
export UV_SYSTEM_CERTS ?= 1
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || test -x $(BIN)/uv || { \
		echo "uv not found: bootstrapping uv==$(UV_LOCKED) from PyPI into $(VENV)"; \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q "uv==$(UV_LOCKED)"; }
	$(UV) sync --frozen --extra dev --python $(PYTHON)
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Dagster UI :3000 (webserver + daemon), API :8000, MLflow UI :5000. Trains first when there is no champion.
run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/exampass-train --if-no-champion
	umask 077; trap 'kill 0' EXIT; \
	$(BIN)/exampass-api & \
	$(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_URI)" --host 127.0.0.1 --port 5000 >/dev/null 2>&1 & \
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg dev --host 127.0.0.1 --port 3000

train: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/exampass-train

serve: install
	$(BIN)/exampass-api

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri "$(MLFLOW_URI)" --host 127.0.0.1 --port 5000

# Re-ingest, re-monitor and retrain over a date range: make backfill START=2026-11-01 END=2026-11-07
backfill: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/exampass-backfill $(START) $(END)

# The monitoring story on its own fresh home, in under two minutes.
demo: install
	rm -rf $(CURDIR)/.exampass/demo
	EXAMPASS_HOME=$(CURDIR)/.exampass/demo DAGSTER_HOME=$(CURDIR)/.exampass/demo/dagster $(BIN)/exampass-demo

bench: bench-model bench-ceiling bench-serve bench-drift bench-segments bench-poisoning bench-advice

bench-model: install
	$(BIN)/python benchmarks/model_quality.py --files 10

bench-ceiling: install
	$(BIN)/python benchmarks/f1_ceiling.py

bench-serve: install
	$(BIN)/python benchmarks/serve.py

bench-drift: install
	$(BIN)/python benchmarks/drift_checks.py

bench-segments: install
	$(BIN)/python benchmarks/segment_warnings.py

bench-scale: install
	$(BIN)/python benchmarks/scale.py

bench-poisoning: install
	$(BIN)/python benchmarks/poisoning.py

bench-advice: install
	$(BIN)/python benchmarks/advice.py

# README screenshots from a real run on a throw-away EXAMPASS_HOME (needs Chromium: make system-deps).
screenshots: install
	$(BIN)/python deploy/screenshots.py

# PostgreSQL (loopback), Chromium and docker-compose from Debian, as CI installs them.
system-deps:
	$(if $(filter 0,$(shell id -u)),,sudo) bash .ci/system-deps.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# Re-resolve every dependency to the newest versions pyproject.toml allows, then install them (see docs/development.md).
lock-upgrade:
	$(UV) lock --upgrade
	$(UV) sync --frozen --extra dev --python $(PYTHON)

clean:
	rm -rf $(EXAMPASS_HOME)

# ================================================================ the Compose stack (docs/deployment.md)
# Everything between these rules lines belongs to the production stack; the logic is in deploy/stack.sh and
# docker/standins/build.sh, the targets only call them. The stack's own variables (COMPOSE_PROJECT_NAME,
# EXAMPASS_ENV_FILE, the *_PUBLISHED_PORT switches of .env.example, ...) pass through from the environment.
.PHONY: stack-up stack-test stack-down stack-status stack-backup stack-restore stack-standins

# Engine started if stopped, stand-in base images where no registry answers, .env with fresh secrets if there is
# none, the image from uv.lock, every service up and healthy, the first champion trained and served.
stack-up:
	bash deploy/stack.sh up

# Removes the containers; the volumes (models, history, keys, logs) stay.
stack-down:
	bash deploy/stack.sh down

stack-status:
	bash deploy/stack.sh status

# The real stack test: its own Compose project on free ports, torn down with its volumes at the end.
stack-test: install
	$(BIN)/python -m pytest -q tests/deploy/test_stack.py tests/deploy/test_stack_replicas.py

# make stack-backup [ARCHIVE=backups/x.tar.gz]; make stack-restore ARCHIVE=backups/x.tar.gz [FORCE=1]
stack-backup:
	bash deploy/stack.sh backup $(ARCHIVE)

stack-restore:
	@test -n "$(ARCHIVE)" || { echo "usage: make stack-restore ARCHIVE=backups/exampass-....tar.gz [FORCE=1]" >&2; exit 2; }
	bash deploy/stack.sh restore $(ARCHIVE) $(if $(FORCE),--force)

# Only the stand-in base images (each built only if its name is neither present nor pullable).
stack-standins:
	bash docker/standins/build.sh
# ============================================================ end of the Compose stack targets
