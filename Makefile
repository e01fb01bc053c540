# dapt_lightning: `make demo` runs the demo, `make test` runs the test suite. Both set up .venv by themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install demo demo-seeds test test-fast services services-stop test-distributed lint format bench bench-gpu clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,notebook]'
	touch $(STAMP)

install: $(STAMP) ## Create/update the virtual environment (.venv) with the package, dev and notebook tools

demo: $(STAMP) ## Zero-shot CLIP, CoOp, VPT and DAPT side by side on the synthetic dataset with the tiny CLIP (seed 1)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/dapt demo

demo-seeds: $(STAMP) ## The README's demo table: every method on seeds 1, 2 and 3, mean ± std
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/dapt demo --seeds 1,2,3 --methods zeroshot,coop,vpt,coop_vpt,dapt

test: $(STAMP) ## Run the whole test suite (fast and slow tests)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## Run only the fast tests
	$(BIN)/python -m pytest -q -m "not slow"

services: ## Start the services the distributed tests use (PostgreSQL, a two-node Slurm cluster; root), scripts/services.sh
	bash scripts/services.sh start

services-stop: ## Stop them
	bash scripts/services.sh stop

test-distributed: $(STAMP) ## Start the services, run the tests that need them (none may skip), stop them
	env=$$(bash scripts/services.sh start) && eval "$$env" && DAPT_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -q -m services; \
	status=$$?; bash scripts/services.sh stop; exit $$status

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## CPU benchmark: naive vs fast (eager and compiled), and fp32 vs bf16-mixed (writes BENCHMARKS.md)
	$(BIN)/python -m benchmarks --compile default --precisions on --output BENCHMARKS.md

bench-gpu: $(STAMP) ## GPU benchmark: 12-layer ViT-B/16, bf16-mixed, eager and compiled (CUDA graphs)
	$(BIN)/python -m benchmarks --device cuda --depth 12 --precision bf16-mixed --compile reduce-overhead --output BENCHMARKS.md

clean: ## Remove runs, caches and build artefacts (keeps .venv)
	rm -rf runs lightning_logs wandb .pytest_cache .ruff_cache
