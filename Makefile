# One command each: `make run` (everything), `make test`, `make train`, `make serve`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export EXAMPASS_HOME ?= $(CURDIR)/.exampass
export DAGSTER_HOME ?= $(EXAMPASS_HOME)/dagster
# Use the Kaggle file from ../shared when it is there and nothing else was configured.
export EXAMPASS_DATA ?= $(if $(wildcard data/StudentsPerformance.csv),data/StudentsPerformance.csv,$(if $(wildcard ../shared/data/StudentsPerformance.csv),$(abspath ../shared/data/StudentsPerformance.csv),data/StudentsPerformance.csv))

.PHONY: install run train serve test lint demo bench screenshots clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

train: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/exampass-train

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/exampass-train --if-no-champion
	$(BIN)/exampass-api & api=$$!; trap "kill $$api 2>/dev/null" EXIT; \
	$(BIN)/dagster dev -w workspace.yaml -h 0.0.0.0 -p 3000

serve: install
	$(BIN)/exampass-api

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(EXAMPASS_HOME)
