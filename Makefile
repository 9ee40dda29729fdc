# The study's two commands: `make study` and `make test` (see README.md).
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= quick
DATA    ?= auto
FORCE   ?=
WORKERS ?=
BIN     := $(VENV)/bin

# Data and weights folders are configuration, passed through from the
# environment: MSTL_DATA_DIR, MSTL_WEIGHTS_DIR, MSTL_RUNS_DIR (README.md).
export MSTL_DATA_DIR MSTL_WEIGHTS_DIR MSTL_RUNS_DIR

.PHONY: study test book notebooks benchmark clean-book help

help:
	@echo "make study   - set up $(VENV), run the notebooks (PROFILE=$(PROFILE), DATA=$(DATA)), build the book"
	@echo "make test    - set up $(VENV) and run the test suite"
	@echo "make benchmark - training throughput (PROFILE=$(PROFILE)) into book/results/benchmark.csv"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

study: $(BIN)/.installed notebooks book

notebooks: $(BIN)/.installed
	$(BIN)/python -m mstl_utils.study --profile $(PROFILE) --data $(DATA) $(if $(FORCE),--force) $(if $(WORKERS),--workers $(WORKERS))

book: $(BIN)/.installed
	$(BIN)/jupyter-book build . --warningiserror --keep-going --quiet

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py --profile $(PROFILE) $(if $(filter-out auto,$(DATA)),--data $(DATA))

test: $(BIN)/.installed
	$(BIN)/python -m pytest

clean-book:
	rm -rf _build
