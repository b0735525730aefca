# The two commands a new user runs (see README.md):
#   make demo   set up .venv, generate the synthetic SIIM-format demo data, build its datalist
#   make test   set up .venv with the test tools and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
DEMO_N ?= 200
DEMO_SIZE ?= 1024
PYTEST_ARGS ?=

.PHONY: demo test test-quick setup setup-dev clean-demo

setup: $(VENV)/.runtime-installed
setup-dev: $(VENV)/.dev-installed

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The CSV is written last, so its presence marks a complete dataset.
$(DEMO_DIR)/siim/train-rle.csv: | $(VENV)/.runtime-installed
	$(PY) -m scripts.synthetic --out $(DEMO_DIR)/siim --n $(DEMO_N) --n_test 20 --size $(DEMO_SIZE) --seed 0

demo: $(VENV)/.runtime-installed $(DEMO_DIR)/siim/train-rle.csv
	$(PY) -m scripts.datalist --data_dir $(DEMO_DIR)/siim --out $(DEMO_DIR)/datalist.json
	@echo "Demo data: $(DEMO_DIR)/siim (SIIM layout: dicom-images-train/, dicom-images-test/, train-rle.csv)"
	@echo "Datalist with 5 stratified folds: $(DEMO_DIR)/datalist.json"
	@echo "Training on it arrives with the training configs (configs/train.json); this command stops after the data."

test: $(VENV)/.dev-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# Skips the slow end-to-end tests (marked 'slow'); CI runs everything.
test-quick: $(VENV)/.dev-installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
