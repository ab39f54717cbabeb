# Entry points for developers and CI (`bash .ci/run` is `make test`).
# Everything installs into a project-local virtualenv so a fresh clone on a
# bare machine needs nothing but python3, make and root for apt-get.

SHELL := /bin/bash
# pipefail: pip's output is filtered through sed below, pip's status must win.
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q
# pip.conf here names an extra index folder that may not exist; pip then warns
# once per package even with -q. Drop only those lines.
PIP_QUIET := 2>&1 | sed -u "/Location 'file:\/\/\/opt\/pypi-more/d"
EXTRAS := embeddings,redis,postgres,gbm,ann,dev
PYTEST_ARGS ?=

# Stamp files remember that an install finished; depending on pyproject.toml
# means a dependency change reinstalls and nothing else does. The full install
# also satisfies the base one, so `make demo` after `make test` is instant.
BASE_STAMP := $(VENV)/.installed-base
FULL_STAMP := $(VENV)/.installed-full

# Developer services live in a fixed per-user, per-checkout place so that
# services-down finds what services-up started (test runs use their own dir).
SERVICES_STATE ?= $(or $(TMPDIR),/tmp)/thrifty-services-$(shell id -u)-$(shell pwd | cksum | cut -d' ' -f1)

# ruff errors on missing paths, and git does not keep an empty bench/.
LINT_PATHS := $(wildcard src tests bench)

.PHONY: help demo install test lint typecheck services-up services-down bench clean distclean

help:
	@echo "make demo           install the package and run 'thrifty demo'"
	@echo "make install        install the package with every extra into $(VENV)"
	@echo "make test           apt deps + Redis/PostgreSQL + ruff + mypy + pytest (PYTEST_ARGS=...)"
	@echo "make lint           ruff check"
	@echo "make typecheck      mypy"
	@echo "make services-up    start Redis/PostgreSQL in the background; eval \"\$$(make -s services-up)\""
	@echo "make services-down  stop them"
	@echo "make bench          run the quick benchmarks (bench/run_all.py; --all for the slow ones)"
	@echo "make clean          remove caches and build artifacts (distclean: also $(VENV))"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e . $(PIP_QUIET)
	@touch $@

# torch==2.13.0 (embeddings extra) resolves to the CPU wheel that pip finds on
# this machine's disk (find-links in pip.conf), not a multi-GB CUDA download.
$(FULL_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[$(EXTRAS)]' $(PIP_QUIET)
	@touch $@ $(BASE_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/thrifty demo

install: $(FULL_STAMP)

test: $(FULL_STAMP)
	bash scripts/test.sh $(PYTEST_ARGS)

lint: $(FULL_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)

typecheck: $(FULL_STAMP)
	$(BIN)/mypy

services-up:
	@bash scripts/apt-deps.sh redis-server postgresql
	@bash scripts/services.sh up $(SERVICES_STATE)
	@echo "# services run in the background; stop them with 'make services-down'" >&2

services-down:
	@bash scripts/services.sh down $(SERVICES_STATE)

bench: $(FULL_STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf build dist .eggs src/*.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts .thrifty-cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
