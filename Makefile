# selfsup workbook. On a fresh machine:  make demo  (whole pipeline + report)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 is the release this project is tested with; override for another CUDA/CPU build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export MPLBACKEND := Agg

.PHONY: setup tex data demo test report clean

setup: $(VENV)/.installed  ## the virtual environment with torch, Jupyter and the library

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

tex:  ## TeX + pandoc for the PDF report (Debian/Ubuntu packages; sudo when not root)
	@bash scripts/install_tex.sh

data: setup data/demo/train.npz

data/demo/train.npz:
	$(BIN)/selfsup data demo --out data/demo

test: setup tex  ## the test suite (CPU, offline, a few minutes)
	$(BIN)/python -m pytest -q

clean:  ## remove generated runs, figures, reports and demo data (keeps the environment)
	rm -rf runs/* reports/* figures/* data/demo
	touch runs/.gitkeep reports/.gitkeep figures/.gitkeep
