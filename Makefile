# The study's two commands: `make study` and `make test` (see README.md).
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= quick
DATA    ?= auto
FORCE   ?=
WORKERS ?=
EXECUTOR ?= local
CHAPTERS ?=
ALL     ?=
SET     ?=
PARAMS  ?=
OUT     ?=
BIN     := $(VENV)/bin

# Data and weights folders are configuration, passed through from the
# environment: MSTL_DATA_DIR, MSTL_WEIGHTS_DIR, MSTL_RUNS_DIR (README.md).
export MSTL_DATA_DIR MSTL_WEIGHTS_DIR MSTL_RUNS_DIR

.PHONY: study gpu-check test test-fast book notebooks benchmark clean-book help

help:
	@echo "make study   - set up $(VENV), run the core notebooks (ALL=1: every chapter; CHAPTERS=\"gan pruning\";"
	@echo "               PROFILE=$(PROFILE), DATA=$(DATA), EXECUTOR=local|ray), build the book"
	@echo "make test    - set up $(VENV) and run the test suite"
	@echo "make benchmark - training throughput (PROFILE=$(PROFILE)) into book/results/benchmark.csv"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

study: $(BIN)/.installed notebooks book

notebooks: $(BIN)/.installed
	$(BIN)/python -m mstl_utils.study --profile $(PROFILE) --data $(DATA) --executor $(EXECUTOR) \
		$(if $(ALL),--chapters all,$(if $(CHAPTERS),--chapters "$(CHAPTERS)")) \
		$(if $(FORCE),--force) $(if $(WORKERS),--workers $(WORKERS)) \
		$(foreach pair,$(SET),--set '$(pair)') $(if $(PARAMS),--params $(PARAMS)) $(if $(OUT),--output $(OUT))

book: $(BIN)/.installed
	$(BIN)/jupyter-book build . --warningiserror --keep-going --quiet

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/run.py --profile $(PROFILE) $(if $(filter-out auto,$(DATA)),--data $(DATA))

# The prepared GPU check (README "The GPU check"): under 10 minutes on one GPU, book/results/gpu_check.csv.
gpu-check:
	PYTHONPATH=. $(PYTHON) benchmarks/gpu_check.py --out book/results/gpu_check.csv

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# The edit-test loop: every test not marked slow (no training beyond a few batches), in under 2 minutes.
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" -q

clean-book:
	rm -rf _build
