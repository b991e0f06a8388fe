# selfsup workbook. On a fresh machine:  make demo  (whole pipeline + report)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 is the release this project is tested with; override for another CUDA/CPU build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export MPLBACKEND := Agg

.PHONY: setup tex chromium slurm data demo test lint report sweep lab tensorboard check-browser clean

setup: $(VENV)/.installed  ## the virtual environment with torch, Jupyter and the library

# A new environment takes 6.5 GB (measured, du -sb: torch's CUDA build and its NVIDIA libraries); a full disk
# otherwise fails halfway through pip with an OSError, leaving a broken .venv behind.
SETUP_FREE_GB ?= 7
$(VENV)/.installed: pyproject.toml
	@[ -d $(VENV) ] || $(PYTHON) -c 'import os, shutil, sys; need = "$(SETUP_FREE_GB)"; \
		where = os.path.dirname(os.path.abspath("$(VENV)")); free = shutil.disk_usage(where).free / 1e9; \
		msg = "make setup: %.1f GB free on the disk of %s; the environment needs about %s GB" \
		" (free some space, or SETUP_FREE_GB=0 to try anyway)"; \
		sys.exit(msg % (free, where, need) if free < float(need) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

tex:  ## TeX + pandoc for the PDF report (Debian/Ubuntu packages; sudo when not root)
	@bash scripts/install_tex.sh

chromium:  ## Debian's chromium for the browser checks (Playwright drives it; no browser download; about 30 s)
	@bash scripts/install_chromium.sh

# A one-node SLURM cluster on this host (munged, slurmctld, slurmd; state and logs in /tmp/selfsup-slurm) for
# `--executor slurm` and tests/test_slurm.py: installs slurm-wlm and munge when missing (apt-get, ~15 s), then
# starts in about a second; idempotent. Stop it with  scripts/slurm_local.sh stop  (only the daemons it started).
slurm:  ## a one-node SLURM cluster here, for --executor slurm and its tests (Debian/Ubuntu; sudo when not root)
	@bash scripts/slurm_local.sh start

data: setup data/demo/train.npz

# Regenerated whenever the generator changes (a file name is not a cache key).
data/demo/train.npz: lib/selfsup/demo_data.py
	$(BIN)/selfsup data demo --out data/demo

# ---- the workbook pipeline: every notebook executed by papermill, its executed copy under runs/notebooks/
DATA ?= data/demo
# The preset: the demo's own on the synthetic demo set (data/demo); on any other DATA (your images) the
# real-image preset, chosen on 10 Tiny ImageNet classes, because the demo preset, made for 32x32 synthetic
# shapes, ended below its random-init floor on real 64x64 images. PRESET=... chooses another (say
# configs/course.yaml on a GPU); the sweep, the final run's folder and the report follow it.
ON_DEMO_DATA := $(filter $(abspath data/demo),$(abspath $(DATA)))
PRESET ?= $(if $(ON_DEMO_DATA),configs/demo.yaml,configs/cpu_real.yaml)
PRESET_NAME := $(basename $(notdir $(PRESET)))
DEMO_PRESET := $(filter demo,$(PRESET_NAME))
PRESET_REASON := $(if $(filter file,$(origin PRESET)),$(if $(ON_DEMO_DATA),the demo data's preset,$(DATA) is not the \
	synthetic demo set (data/demo): the real-image preset),as given)
RUN ?= $(if $(DEMO_PRESET),runs/final,runs/final_$(PRESET_NAME))
SWEEP ?= $(if $(DEMO_PRESET),configs/sweeps/demo.yaml,configs/sweeps/real_demo.yaml)
SWEEP_NAME := $(basename $(notdir $(SWEEP)))
NB_OUT := runs/notebooks
# The demo's method comparison (6 epochs, monitored only at the end) and sweep (configs/sweeps/demo.yaml)
# are shortened versions of configs/demo.yaml, each point with the preset's 3 seeds; the final run uses
# the preset unchanged. On real images: 4 epochs a method and configs/sweeps/real_demo.yaml, one seed.
# JOBS > 1 trains that many runs at once on cores/JOBS threads each (on a 2-core
# machine not faster, measured). The whole demo's time, measured in fresh clones, is in README.md.
COMPARE_DEMO := {epochs: 6, eval_every: 0}
COMPARE_REAL := {epochs: 4, eval_every: 0}
COMPARE_OVERRIDES ?= $(if $(DEMO_PRESET),$(COMPARE_DEMO),$(COMPARE_REAL))
JOBS ?= 1
COMPARE_EVAL ?= {table: false}
# The report's comparison and sweeps. make demo names those it ran: the comparison of PRESET and, on other
# data than the demo set, only its own sweep (not the demo data's). make report finds them: the comparison of
# PRESET when there is one (else the newest), and every sweep in runs/ unless, on other data, the
# real-image demo's sweep has run. (A recipe is expanded before it runs: make demo cannot look.)
DEMO_SWEEPS := $(if $(ON_DEMO_DATA),,$(SWEEP_NAME))
REPORT_COMPARE = $(if $(wildcard runs/compare_$(PRESET_NAME)/results.csv),compare_$(PRESET_NAME))
REPORT_SWEEPS = $(if $(ON_DEMO_DATA),,$(if $(wildcard runs/$(SWEEP_NAME)/results.csv),$(SWEEP_NAME)))
# $(call EXPORT_REPORT,comparison,sweep): either may be empty
define EXPORT_REPORT
@mkdir -p $(NB_OUT)
$(BIN)/selfsup report --notebook notebooks/05_report.ipynb --out reports -p data_dir $(DATA) -p final_run $(RUN) \
	$(if $(1),-p compare $(1)) $(if $(2),-p sweeps $(2))
cp reports/report.ipynb $(NB_OUT)/05_report.ipynb
endef
# --log-output streams the cells' output (sweep lines, training progress) to the terminal.
PAPERMILL := $(BIN)/papermill --kernel python3 --log-output

demo: setup tex data  ## the whole pipeline on DATA (default the demo data) -> figures/Figure1-3.png, reports/report.{html,pdf,md}
	@mkdir -p $(NB_OUT)
	@echo "== preset $(PRESET): $(PRESET_REASON); PRESET=... for another"
	@echo "== [1/6] $$(date +%T) methods compared: SimCLR, BYOL, Barlow Twins, VICReg -> runs/compare_$(PRESET_NAME)/"
	$(PAPERMILL) notebooks/01_compare_methods.ipynb $(NB_OUT)/01_compare_methods.ipynb \
		-p config_path $(PRESET) -p data_dir $(DATA) -y 'overrides: $(COMPARE_OVERRIDES)' \
		-y 'eval_options: $(COMPARE_EVAL)' -p jobs $(JOBS)
	@echo "== [2/6] $$(date +%T) ablation sweep $(SWEEP) -> runs/$(SWEEP_NAME)/"
	$(BIN)/selfsup sweep $(SWEEP) --data $(DATA) --jobs $(JOBS)
	@echo "== [3/6] $$(date +%T) ablation tables and plots"
	$(PAPERMILL) notebooks/02_ablations.ipynb $(NB_OUT)/02_ablations.ipynb $(if $(DEMO_SWEEPS),-p sweeps $(DEMO_SWEEPS))
	@echo "== [4/6] $$(date +%T) final run: $(PRESET) -> $(RUN)/"
	$(PAPERMILL) notebooks/03_train.ipynb $(NB_OUT)/03_train.ipynb \
		-p preset $(PRESET) -p data_dir $(DATA) -p run_dir $(RUN) -p resume True
	@echo "== [5/6] $$(date +%T) evaluation and Figures 1-3 -> figures/"
	$(PAPERMILL) notebooks/04_evaluate.ipynb $(NB_OUT)/04_evaluate.ipynb -p run_dir $(RUN) -p data_dir $(DATA)
	@echo "== [6/6] $$(date +%T) report -> reports/report.{html,pdf,md}"
	$(call EXPORT_REPORT,compare_$(PRESET_NAME),$(DEMO_SWEEPS))
	@echo "$$(date +%T) done: figures/Figure1-3.png, reports/report.html, reports/report.pdf, reports/report.md"

report: setup  ## export notebooks/05_report.ipynb (results of DATA, PRESET, RUN and runs/) -> reports/report.{html,pdf,md}
	$(call EXPORT_REPORT,$(REPORT_COMPARE),$(REPORT_SWEEPS))

sweep: setup  ## run a sweep file, resumable:  make sweep SWEEP=configs/sweeps/course_temperature.yaml [DATA=data/course]
	$(BIN)/selfsup sweep $(SWEEP) $(if $(filter command line,$(origin DATA)),--data $(DATA))

test: setup tex  ## the test suite (CPU, offline, a few minutes; the browser tests skip without Chromium: make chromium)
	$(BIN)/python -m pytest -q

# The configuration is pyproject.toml's [tool.ruff]; `ruff format lib tests benchmarks scripts` fixes the format.
LINT_PATHS := lib tests benchmarks scripts
lint: setup  ## ruff: lint of lib/, tests/, benchmarks/, scripts/ and notebooks/, format check of all but notebooks (seconds)
	$(BIN)/ruff check $(LINT_PATHS) notebooks
	$(BIN)/ruff format --check $(LINT_PATHS)

# JupyterLab bound to 127.0.0.1; as root (containers) with --allow-root, which jupyter otherwise
# refuses ("Running as root is not recommended"). More options: make lab LAB_ARGS='--port 8890 --no-browser'
LAB_ARGS ?=
lab: setup  ## JupyterLab on 127.0.0.1 for the notebooks and the explorer (root-safe)
	$(BIN)/jupyter lab --ip 127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# TensorBoard over every run folder's events/ (losses, lr, k-NN monitor, images/s, the evaluation; the
# config in the HParams tab), every run and sweep point side by side; bound to 127.0.0.1 as make lab.
# More options: make tensorboard TB_ARGS='--port 6007'
TB_ARGS ?=
tensorboard: setup  ## TensorBoard on 127.0.0.1:6006 over runs/ (every run's curves and config side by side)
	$(BIN)/tensorboard --logdir runs --host 127.0.0.1 $(TB_ARGS)

# Headless Chromium driven by Playwright: reports/report.html from disk with networking off, and
# notebook 04 run in a JupyterLab started on 127.0.0.1, where another image is chosen in the explorer.
# Screenshots -> reports/screens/. On a tiny run made for the check (about 40 s) unless RUN=... DATA=...
# are given; checks the tiny run's report when reports/report.html is missing.
check-browser: setup chromium  ## the report and the explorer in headless Chromium -> reports/screens/*.png
	$(BIN)/python scripts/check_browser.py --screens reports/screens \
		$(if $(filter command line,$(origin RUN)),--run $(RUN) --data $(DATA))

clean:  ## remove generated runs, figures, reports and demo data (keeps the environment)
	rm -rf runs/* reports/* figures/* data/demo
	touch runs/.gitkeep reports/.gitkeep figures/.gitkeep
