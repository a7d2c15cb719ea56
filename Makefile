# cxrlake: one entry point for developers, CI and the README. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED ?= $(abspath ../shared)
DATA := $(SHARED)/data
LAKEHOUSE ?= lakehouse
ENV ?= dev
# Serialise builds into the shared venv (parallel developers / CI steps).
LOCK := flock /tmp/cxrlake-build.lock

.DEFAULT_GOAL := help
.PHONY: help sysdeps setup develop wheel wheel-smoke test test-rust test-python lint typecheck fmt bench bench-rust \
        demo report train bundle-validate fuzz fuzz-smoke clean databricks-jars databricks-local test-databricks-slow

help: ## List every target with a one-line description
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

sysdeps: ## Install system packages the build needs (cmake, nasm, Java 17 for PySpark, Maven for Delta's jars, Chromium for the browser test) if missing
	@missing=""; command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v nasm >/dev/null || missing="$$missing nasm"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Every package comes from pyproject.toml: the runtime dependencies plus these extras.
EXTRAS := local train spark dev
$(VENV)/.deps: pyproject.toml tools/requirements.py
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c 'import tomllib' 2>/dev/null || $(PIP) install -q tomli
	$(PY) tools/requirements.py pyproject.toml $(EXTRAS) > $(VENV)/requirements.txt
	$(PIP) install -q -r $(VENV)/requirements.txt
	$(PIP) install -q -r requirements-dicom-test.txt
	$(PIP) install -q -r requirements-review-test.txt
	touch $@

setup: sysdeps $(VENV)/.deps ## Create .venv with every Python dependency (pyproject.toml: runtime + local, train, spark, dev extras)

develop: setup ## Build the Rust extension (release) and install cxrlake into .venv (editable)
	$(LOCK) $(VENV)/bin/maturin develop --release --quiet

# maturin --zig runs zig (`python-zig` from the ziglang package) found on PATH: the venv's bin first.
VENV_PATH = PATH="$(abspath $(VENV))/bin:$$PATH"

wheel: setup ## Build a portable manylinux abi3 wheel into dist/ (the only cxrlake wheel there)
	$(VENV_PATH) tools/wheel_toolchain.sh
	rm -f dist/cxrlake-*.whl
	$(LOCK) env $(VENV_PATH) maturin build --release --zig --compatibility manylinux2014 --out dist

wheel-smoke: wheel ## Install dist/'s wheel into a clean venv, import cxrlake and score one film (as CI)
	tools/wheel_smoke.sh dist $(firstword $(wildcard $(DATA)/chest_xray_fullres/PNEUMONIA/*.jpeg))

test: develop test-rust test-python ## Run every test: cargo (core), pytest (API, pipeline, Spark, bundle)

# ONNX Runtime shared library from the onnxruntime wheel in the venv (cargo tests/benches load it).
ORT_LIB = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1*))

test-rust: sysdeps $(VENV)/.deps ## Rust unit and integration tests of the core
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) CXRLAKE_SHARED_DATA=$(DATA) cargo test --release --quiet

test-python: develop databricks-jars ## pytest suites (real images from ../shared/data)
	CXRLAKE_SHARED_DATA=$(DATA) $(VENV)/bin/pytest -q

# Delta Lake for the pinned pyspark, from Maven Central (tools/databricks_local/pom.xml), into a
# git-ignored cache; cxrlake.spark.local_runtime puts them on the Spark class path.
JARS := .cache/databricks-jars
DATABRICKS_LOCAL ?= databricks-local
$(JARS)/.fetched: tools/databricks_local/pom.xml
	rm -rf $(JARS)
	mvn -B -q -f tools/databricks_local/pom.xml dependency:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(abspath $(JARS))
	touch $@

databricks-jars: sysdeps $(JARS)/.fetched ## Fetch Delta Lake's jars for the pinned pyspark (Maven Central) into .cache/

databricks-local: develop databricks-jars ## Run the bundle's dev job graph (jobs/ notebooks) on PySpark + Delta Lake; tables in databricks-local/
	CXRLAKE_SHARED_DATA=$(DATA) $(PY) -m cxrlake.spark.databricks_local --out $(DATABRICKS_LOCAL) \
	  --source $(DATA)/chest_xray/train --per-label 12

test-databricks-slow: develop databricks-jars ## The databricks-local SIGKILL-and-rerun test (~10 min), left out of `make test` for CI's time
	CXRLAKE_SLOW_TESTS=1 CXRLAKE_SHARED_DATA=$(DATA) $(VENV)/bin/pytest -q tests/python/test_databricks_local.py -k sigkill

# mypy reads its settings from pyproject.toml ([tool.mypy]: python/cxrlake, every function typed).
ANY_LIMIT := 80
typecheck: setup ## mypy over python/cxrlake (pyproject.toml [tool.mypy]); fail above 80 uses of `Any` (tools/count_any.py)
	$(VENV)/bin/mypy
	$(PY) tools/count_any.py python/cxrlake --max $(ANY_LIMIT)

lint: setup typecheck ## clippy -D warnings, cargo fmt --check, ruff check, ruff format --check, import contracts (.importlinter), typecheck
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --all-targets --features python --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests benches fuzz tools
	$(VENV)/bin/ruff format --check python tests benches fuzz tools
	PYTHONPATH=python $(VENV)/bin/lint-imports --no-cache

fmt: setup ## Format Rust and Python sources
	cargo fmt --all
	cargo fmt --manifest-path fuzz/Cargo.toml
	$(VENV)/bin/ruff format python tests benches fuzz tools
	$(VENV)/bin/ruff check --fix python tests benches fuzz tools

bench: develop ## Side-by-side benchmark vs PIL+numpy+onnxruntime on the 200 full-res images (ratios, one run)
	CXRLAKE_SHARED_DATA=$(DATA) $(PY) benches/side_by_side.py --images $(DATA)/chest_xray_fullres

bench-rust: sysdeps $(VENV)/.deps ## criterion benches of the Rust kernels
	ORT_DYLIB_PATH=$(abspath $(ORT_LIB)) CXRLAKE_SHARED_DATA=$(DATA) cargo bench

demo: develop ## Run the local bronze -> silver -> gold pipeline on real images, print the summary, write report.html
	$(VENV)/bin/cxrlake pipeline run --source $(DATA)/chest_xray_fullres --source $(DATA)/chest_xray/train \
	  --sample-per-label 150 --lakehouse $(LAKEHOUSE) --env $(ENV)
	$(VENV)/bin/cxrlake report --lakehouse $(LAKEHOUSE) --env $(ENV) --out report.html
	@echo "report written to $(abspath report.html)"

train: develop ## Train the shipped pneumonia CNN 1.2.0 (recipe 1.0.0+longer, latest acquisition batches held out), export ONNX, log to MLflow
	$(VENV)/bin/cxrlake train --data $(DATA)/chest_xray/train --recipe 1.0.0+longer --threads 2 \
	  --seed 42 --model-version 1.2.0 --target-sensitivity 0.95 --out python/cxrlake/models --card MODEL_CARD.md

bundle-validate: setup ## Validate bundle/ for dev, pilot and prod against the official bundle JSON schema
	$(PY) tools/bundle_check.py --bundle bundle --schema $(SHARED)/databricks/bundle_jsonschema.json --targets dev pilot prod

fuzz: setup ## Run every cargo-fuzz target (ASan) for FUZZ_SECONDS each (default 600); installs cargo-fuzz
	PYTHON=$(PY) ./fuzz/run.sh $${FUZZ_SECONDS:-600}

fuzz-smoke: setup ## Short fuzz smoke run (30 s per target), as in CI; fails on any crash, hang, OOM or leak
	PYTHON=$(PY) ./fuzz/run.sh 30

clean: ## Remove build outputs, the local lakehouse and the report
	rm -rf target dist $(LAKEHOUSE) report.html .pytest_cache $(DATABRICKS_LOCAL)
