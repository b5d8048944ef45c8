# Two entry points: `make demo` (quickstart tournament) and `make test` (the whole suite).
# Both create .venv and install what they need; torch is installed first and pinned to the
# CPU build on this machine's disk so that nothing else drags in a multi-GB CUDA build.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
QUIET := sed -u '/^WARNING: Location/d'
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: demo test fashion-mnist chromium clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)" 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q -e ".[test,ray,keras]" 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, arena, pytest"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/arena run tournaments/quickstart.toml --db results/quickstart.db

# Real Fashion-MNIST from Debian's package, for the tests that use it (skipped where absent).
fashion-mnist:
	@test -d $(FASHION) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "note: dataset-fashion-mnist not installed; its tests will be skipped"

# Headless Chromium for the published-site browser test (skipped where absent).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) \
		|| echo "note: chromium not installed; the browser test will be skipped"

# One OpenMP thread per process: the test models are tiny, and two spinning threads on two
# shared cores made some runs 10x slower in measurements. TEST_WORKERS pytest processes side by
# side (pytest-xdist), each taking whole test files, so that a file's module fixtures are built
# once; the slowest file starts first (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP) fashion-mnist chromium
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --durations=30 \
		$(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

clean:
	rm -rf $(VENV) results .arena .pytest_cache
