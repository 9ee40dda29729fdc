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

.PHONY: study gpu-check test test-fast book notebooks benchmark clean-book help lock

help:
	@echo "make study   - set up $(VENV), run the core notebooks (ALL=1: every chapter; CHAPTERS=\"gan pruning\";"
	@echo "               PROFILE=$(PROFILE), DATA=$(DATA), EXECUTOR=local|ray), build the book"
	@echo "make test    - set up $(VENV) and run the test suite"
	@echo "make benchmark - training throughput (PROFILE=$(PROFILE)) into book/results/benchmark.csv"

# The locked environment (requirements.lock: the versions the committed book was made with). Where this
# machine refuses a locked version, the install names it and takes the nearest allowed (mstl_utils.core.environment.py);
# each run's provenance records the lock's hash and every difference.
$(BIN)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m mstl_utils.core.environment install
	touch $@

# Rewrite requirements.lock from pyproject.toml (needs the package registry), torch pinned to the book's.
LOCK_TORCH ?= 2.15.0
LOCK_TORCHVISION ?= 0.29.2
lock: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet uv
	printf 'torch==$(LOCK_TORCH)\ntorchvision==$(LOCK_TORCHVISION)\n' > .lock-pins.txt
	$(BIN)/python -m uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -c .lock-pins.txt --no-header --quiet -o .lock-body.txt
	{ echo "# The environment the committed book was made with. Rewritten by 'make lock' (uv pip compile of"; \
	  echo "# pyproject.toml's dependencies and [dev] extra; torch==$(LOCK_TORCH), torchvision==$(LOCK_TORCHVISION))."; \
	  echo "# Installed by 'make study' and 'make test' (python -m mstl_utils.core.environment install)."; \
	  cat .lock-body.txt; } > requirements.lock
	rm -f .lock-pins.txt .lock-body.txt

study: $(BIN)/.installed notebooks book

notebooks: $(BIN)/.installed
	$(BIN)/python -m mstl_utils.study --profile $(PROFILE) --data $(DATA) --executor $(EXECUTOR) \
		$(if $(ALL),--chapters all,$(if $(CHAPTERS),--chapters "$(CHAPTERS)")) \
		$(if $(FORCE),--force) $(if $(WORKERS),--workers $(WORKERS)) \
		$(foreach pair,$(SET),--set '$(pair)') $(if $(PARAMS),--params $(PARAMS)) $(if $(OUT),--site $(OUT))

# The book of the committed study, or of the study in OUT; REPOSITORY (the repository's address) adds launch buttons.
REPOSITORY ?= $(MSTL_REPOSITORY_URL)
book: $(BIN)/.installed
	$(BIN)/jupyter-book build $(or $(OUT),.) --warningiserror --keep-going --quiet \
		$(if $(REPOSITORY),--config "$$($(BIN)/python -m mstl_utils.study --book-config '$(REPOSITORY)' --site $(or $(OUT),.))")

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
