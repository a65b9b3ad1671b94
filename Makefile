# Everything runs inside .venv; `make setup` is idempotent and quick once done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-slow demo study clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,torch,export]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q --run-slow $(PYTEST_ARGS)

# Synthetic data -> quickstart training -> evaluation report. Rerunning resumes / skips what is done.
DEMO ?= demo
DEMO_SIZE := 96x128
demo: setup
	test -f $(DEMO)/data/synthetic_info.json || $(PY) -m data_pipelines.synthetic --out $(DEMO)/data
	$(PY) train.py --config configs/quickstart.py --workdir $(DEMO)/run --config.data.root=$(DEMO)/data
	for set in nyu lilocbench corridor; do \
	  $(PY) eval.py --checkpoint $(DEMO)/run --dataset $$set --data $(DEMO)/data/$$set --size $(DEMO_SIZE) \
	    --out $(DEMO)/report/$$set.json --save-predictions $(DEMO)/report/predictions/$$set || exit 1; \
	done
	{ echo '# Quickstart report'; echo; \
	  echo 'Synthetic data (`$(DEMO)/data`), `configs/quickstart.py` trained in `$(DEMO)/run`,' \
	       'evaluated at $(DEMO_SIZE) on each validation split (NYU-like rooms, LILocBench-like corridors, the corridor deployment set).'; \
	  for set in nyu lilocbench corridor; do \
	    echo; echo "## $$set"; echo; cat $(DEMO)/report/$$set.md; echo; \
	    for p in $(DEMO)/report/predictions/$$set/*_panel.png; do echo "![$$set]($${p#$(DEMO)/report/})"; done; \
	  done; } > $(DEMO)/report/REPORT.md
	@echo "report: $(DEMO)/report/REPORT.md (metrics: $(DEMO)/report/*.json; TensorBoard: $(DEMO)/run/tb)"

# The domain-mixing study (studies/domain_mixing.py) on synthetic data: pretraining, then every
# protocol x seed from it, one table (STUDY/study.md) and one plot (STUDY/pareto.png). Rerunning
# skips finished runs and evaluations and resumes an interrupted one. STUDY_ARGS: --config.k=v ...
STUDY ?= study
STUDY_CONFIG ?= configs/study_synthetic.py
STUDY_ARGS ?=
study: setup
	test -f $(STUDY)/data/synthetic_info.json || $(PY) -m data_pipelines.synthetic --out $(STUDY)/data --size default --overwrite
	$(PY) -m studies.domain_mixing --config $(STUDY_CONFIG) --workdir $(STUDY) --config.data_root=$(STUDY)/data $(STUDY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
