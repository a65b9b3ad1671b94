# Everything runs inside .venv; `make setup` is idempotent and quick once done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup lint test test-fast test-slow demo study wheels device-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,torch,tfds,export,viewer]'
	touch $(STAMP)

setup: $(STAMP)

# lint: ruff's checks as pyproject.toml configures them (no formatter: the code aligns continuation lines by hand).
lint: setup
	$(VENV)/bin/ruff check .

# test: the default suite, what CI runs; test-fast: without the e2e tests; test-slow: also the slow ones.
# TEST_WORKERS pytest processes (pytest-xdist), one module each at a time (its module fixtures run once);
# TEST_WORKERS=0 runs in this process (pdb, -s).
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup
	$(PY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m 'not e2e' $(XDIST) $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q --run-slow $(XDIST) $(PYTEST_ARGS)

# Synthetic data -> decode once -> quickstart training -> evaluation report. Rerunning resumes / skips what is done.
# DEMO_SEED: the synthetic generator's seed (the README's table: seeds 0-9, benchmarks/demo_seeds.py).
DEMO ?= demo
DEMO_SEED ?= 0
DEMO_SIZE := 96x128
demo: setup
	test -f $(DEMO)/data/synthetic_info.json || $(PY) -m data_pipelines.synthetic --out $(DEMO)/data --seed $(DEMO_SEED) \
	  --size demo
	test -f $(DEMO)/data/decoded/decoded.json || $(PY) -m data_pipelines.decoded --root $(DEMO)/data --input-size $(DEMO_SIZE)
	$(PY) train.py --config quickstart --workdir $(DEMO)/run --config.data.root=$(DEMO)/data \
	  --config.data.format=decoded
	for set in nyu lilocbench corridor; do \
	  $(PY) eval.py --checkpoint $(DEMO)/run --dataset $$set --data $(DEMO)/data/$$set --size $(DEMO_SIZE) \
	    --out $(DEMO)/report/$$set.json --save-predictions $(DEMO)/report/predictions/$$set --overwrite || exit 1; \
	done
	{ echo '# Quickstart report'; echo; \
	  echo 'Synthetic data (`$(DEMO)/data`), the preset `quickstart` trained in `$(DEMO)/run`,' \
	       'evaluated at $(DEMO_SIZE) on each validation split (NYU-like rooms, LILocBench-like corridors, the corridor deployment set).'; \
	  for set in nyu lilocbench corridor; do \
	    echo; echo "## $$set"; echo; cat $(DEMO)/report/$$set.md; echo; \
	    for p in $(DEMO)/report/predictions/$$set/*_panel.png; do echo "![$$set]($${p#$(DEMO)/report/})"; done; \
	  done; } > $(DEMO)/report/REPORT.md
	@echo "report: $(DEMO)/report/REPORT.md (metrics: $(DEMO)/report/*.json); TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO)/run/tb"

# The domain-mixing study (studies/domain_mixing.py) on synthetic data: pretraining, then every
# protocol x seed from it, one table (STUDY/study.md) and one plot (STUDY/pareto.png). Rerunning
# skips finished runs and evaluations and resumes an interrupted one. STUDY_ARGS: --config.k=v ...
STUDY ?= study
STUDY_CONFIG ?= configs/study_synthetic.py
STUDY_ARGS ?=
study: setup
	test -f $(STUDY)/data/synthetic_info.json || $(PY) -m data_pipelines.synthetic --out $(STUDY)/data --size default --overwrite
	$(PY) -m studies.domain_mixing --config $(STUDY_CONFIG) --workdir $(STUDY) --config.data_root=$(STUDY)/data $(STUDY_ARGS)

# The GPU check (benchmarks/device_check.py) on a machine without network whose image is listed in
# benchmarks/device_image_packages.txt (Python 3.12, jax, flax, optax, orbax-checkpoint, torch, ...):
# `make wheels` here computes what the project needs beyond that list (benchmarks/device_image.py:
# pyproject.toml's requirements and theirs, at this venv's versions) and downloads those wheels
# into .whl/ (ignored; copy it along with the tree); then on that machine `make device-check`
# installs them into $(DEVICE_SITE) and runs the check, writing device_check.{json,md,log} to $$OUT
# (default device_check_out/). WHEELS_EXTRA: more name==version, carried as given.
WHEELS_EXTRA ?=
WHEEL_PY ?= $(PY)
DEVICE_PYTHON ?= python3
DEVICE_SITE ?= /tmp/site
DEVICE_CHECK_ARGS ?=

wheels: setup
	$(WHEEL_PY) benchmarks/device_image.py download --out .whl --extra '$(WHEELS_EXTRA)'
	@ls .whl; du -sh .whl

device-check:
	@ls .whl/*.whl >/dev/null 2>&1 || { echo "error: .whl/ has no wheels: run 'make wheels' where PyPI is reachable and bring .whl/ along" >&2; exit 2; }
	$(DEVICE_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(DEVICE_SITE) .whl/*.whl
	PYTHONPATH=$(DEVICE_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} DEVICE_CHECK_COMMAND='make device-check' \
	  $(DEVICE_PYTHON) benchmarks/device_check.py --out "$${OUT:-device_check_out}" $(DEVICE_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
