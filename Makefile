# hemoprofile: the two commands a newcomer needs.
#   make demo   create the environment (first time), then run the workflow on the built-in synthetic cohort
#               (the quick demo, config/config.yaml: classical segmenter, shorter training)
#   make demo-full   the same cohort with the settings of config/full.yaml (Cellpose, full training)
#   make test   create the environment (first time), then run the whole test suite
# Both work offline on a machine with no GPU; installs come from the Python package index only.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hemoprofile-installed
# The CPU build of PyTorch, pinned: an unpinned torch pulls gigabytes of CUDA packages.
TORCH_SPEC ?= torch==2.13.0
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env demo demo-full test test-fast lint dryrun clean-results

env: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== creating the environment in $(VENV) (once; a few minutes) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	@echo "== running the quick demo on the synthetic cohort (outputs in results/; make demo-full: the full one) =="
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	@echo "== done: outputs under results/ (README.md, section What the demo writes, lists them) =="

demo-full: $(STAMP)
	@echo "== running the full demo (config/config.yaml + config/full.yaml; outputs in results/) =="
	$(BIN)/snakemake --profile profiles/default --cores $(CORES) --configfile config/full.yaml
	@echo "== done: outputs under results/ (README.md, section What the demo writes, lists them) =="

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --dry-run

clean-results:
	rm -rf results .snakemake/metadata .snakemake/incomplete
