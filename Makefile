# Single entry point. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-test
MODELS_DIR ?= model_store
MODELS ?= default
PORT   ?= 8000

.PHONY: install run generate test lint bench-engine bench-serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One install (runtime + test extras) so `run` and `test` share the venv.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(STAMP)

run: install
	$(VENV)/bin/gpt2-serve serve --models $(MODELS) --models-dir $(MODELS_DIR) --port $(PORT)

generate: install
	$(VENV)/bin/gpt2-serve generate --models-dir $(MODELS_DIR) --model $(MODELS) --prompt "$${PROMPT:-The meaning of life is}" --length 40

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check app tests bench

bench-engine: install
	$(PY) bench/engine.py

bench-serve: install
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache
