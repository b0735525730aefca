# The two commands a new user runs (see README.md):
#   make demo   set up .venv, generate the synthetic SIIM-format demo data, train on it (CPU is fine), evaluate,
#               run inference on the demo's unannotated test images
#   make test   set up .venv with the test tools and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo
# The demo profile (configs/demo.json for the demo model, demo_train.json and demo_inference.json) trains a small network for a few minutes on a CPU, so its data set is small
# (256 x 256) with clearly visible, larger pneumothoraces; the generator's defaults (1024 x 1024, subtle,
# SIIM-like sizes) are the hard case.
DEMO_N ?= 400
DEMO_SIZE ?= 256
DEMO_CONTRAST ?= 25
DEMO_LESION_SCALE ?= 3
# Chest drains, ECG leads, lines, markers, burned-in text, collimation (scripts/synthetic/devices.py); empty for none
DEMO_DEVICES ?= --devices
BUNDLE_RUN := PYTHONPATH=. $(PY) -m monai.bundle run --meta_file configs/metadata.json --logging_file configs/logging.conf
# Every bundle command reads configs/common.json (network, device and precision, workers, triplet, image loading) first.
TRAIN_CONFIGS := 'configs/common.json','configs/train.json'
INFERENCE_CONFIGS := 'configs/common.json','configs/inference.json'
# --durations: the slowest tests and their seconds, at the end of every run (to keep CI within its budget).
PYTEST_ARGS ?= --durations=15

LABEL_VENV := .venv-label
STUDIES ?= $(DEMO_DIR)/siim
WEIGHTS ?= models/model.pt
PORT ?= 8000
LABEL_ARGS ?=
# The web viewer: the model of CKPT_DIR, the worklist of RESULTS (an inference output folder) if given, on
# 127.0.0.1:PORT (8080 unless PORT is given: the label server's 8000 default is not the viewer's).
CKPT_DIR ?= models
RESULTS ?=
VIEWER_ARGS ?=
VIEWER_PORT = $(if $(filter command line environment,$(origin PORT)),$(PORT),8080)
# Debian packages the tests need (installed as root, once): chromium for the viewer's browser test, Orthanc and
# its DICOMweb plugin for the DICOMweb tests.
SYSTEM_PACKAGES := chromium orthanc orthanc-dicomweb

.PHONY: demo test test-quick setup setup-dev setup-label label-server clean-demo
.PHONY: viewer shortcut dicomweb

setup: $(VENV)/.runtime-installed
setup-dev: $(VENV)/.dev-installed
# MONAI Label 0.8.5 needs numpy 1.26, pydicom 2 and a CUDA torch build for torchvision: a venv of its own (~7.5 GB)
setup-label: $(LABEL_VENV)/.installed

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Re-checked when the Makefile (SYSTEM_PACKAGES) changes; apt-get runs only for what is missing.
$(VENV)/.system-packages: Makefile
	command -v chromium >/dev/null && test -x /usr/sbin/Orthanc && dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); }
	mkdir -p $(VENV)
	touch $@

$(LABEL_VENV)/.installed: requirements-monailabel.txt
	test -x $(LABEL_VENV)/bin/python || $(PYTHON) -m venv $(LABEL_VENV)
	$(LABEL_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-monailabel.txt
	touch $@

# The CSV is written last, so its presence marks a complete dataset.
$(DEMO_DIR)/siim/train-rle.csv: | $(VENV)/.runtime-installed
	$(PY) -m scripts.synthetic --out $(DEMO_DIR)/siim --n $(DEMO_N) --n_test 20 --size $(DEMO_SIZE) \
		--lesion_contrast $(DEMO_CONTRAST) --lesion_scale $(DEMO_LESION_SCALE) $(DEMO_DEVICES) --seed 0

demo: $(VENV)/.runtime-installed $(DEMO_DIR)/siim/train-rle.csv
	$(PY) -m scripts.siim.datalist --data_dir $(DEMO_DIR)/siim --out $(DEMO_DIR)/datalist.json
	$(BUNDLE_RUN) --config_file "[$(TRAIN_CONFIGS),'configs/demo.json','configs/demo_train.json']" --bundle_root . \
		--dataset_dir $(DEMO_DIR)/siim --datalist_file $(DEMO_DIR)/datalist.json --ckpt_dir $(DEMO_DIR)/models \
		--output_dir $(DEMO_DIR)/runs/train
	$(BUNDLE_RUN) --config_file "[$(TRAIN_CONFIGS),'configs/evaluate.json','configs/demo.json','configs/demo_train.json']" \
		--bundle_root . --dataset_dir $(DEMO_DIR)/siim --datalist_file $(DEMO_DIR)/datalist.json \
		--ckpt_dir $(DEMO_DIR)/models --output_dir $(DEMO_DIR)/runs/eval
	$(BUNDLE_RUN) --config_file "[$(INFERENCE_CONFIGS),'configs/demo.json','configs/demo_inference.json']" --bundle_root . \
		--dataset_dir $(DEMO_DIR)/siim/dicom-images-test --output_dir $(DEMO_DIR)/runs/inference \
		--ckpt_dir $(DEMO_DIR)/models --overwrite true
	$(PY) -m scripts.evaluation.report --demo_dir $(DEMO_DIR)

test: $(VENV)/.dev-installed $(LABEL_VENV)/.installed
test: $(VENV)/.system-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# Skips the slow end-to-end tests (marked 'slow'); CI runs everything.
test-quick: $(VENV)/.dev-installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# MONAI Label server on STUDIES (a SIIM tree or a flat folder of DICOMs) serving WEIGHTS, on 127.0.0.1:PORT.
# For the demo model: make label-server WEIGHTS=demo/models/model.pt LABEL_ARGS="--override configs/demo.json \
#     --override configs/demo_train.json --override configs/demo_inference.json"
label-server: $(VENV)/.runtime-installed $(LABEL_VENV)/.installed
	PYTHONPATH=. $(PY) -m scripts.serving.label_server --studies $(STUDIES) --weights $(WEIGHTS) --port $(PORT) $(LABEL_ARGS)

# The web viewer (scripts/serving/viewer.py) on 127.0.0.1. For the demo model and its inference results:
# make viewer CKPT_DIR=demo/models RESULTS=demo/runs/inference \
#     VIEWER_ARGS="--override configs/demo.json --override configs/demo_inference.json"
viewer: $(VENV)/.runtime-installed
	PYTHONPATH=. $(PY) -m scripts.serving.viewer --ckpt_dir $(CKPT_DIR) $(if $(RESULTS),--results $(RESULTS)) \
		--port $(VIEWER_PORT) $(VIEWER_ARGS)

# Inference next to a PACS: new frontal CR/DX radiographs on the DICOMweb server DICOMWEB_URL, their SEGs stored back;
# the ledger and each run's results in DICOMWEB_OUT (credentials: $$DICOMWEB_USERNAME / $$DICOMWEB_PASSWORD, $$DICOMWEB_TOKEN
# or $$DICOMWEB_AUTH_FILE). DICOMWEB_ARGS: --since, --study, --series, --modality, --override...
DICOMWEB_URL ?=
DICOMWEB_OUT ?= runs/dicomweb
DICOMWEB_ARGS ?=
dicomweb: $(VENV)/.runtime-installed
	@test -n "$(DICOMWEB_URL)" || { echo "make dicomweb DICOMWEB_URL=http://host:8042/dicom-web [DICOMWEB_OUT=...]"; exit 2; }
	PYTHONPATH=. $(PY) -m scripts.serving.dicomweb --url $(DICOMWEB_URL) --output_dir $(DICOMWEB_OUT) \
		--ckpt_dir $(CKPT_DIR) $(DICOMWEB_ARGS)

# The shortcut experiment (docs/README.md, "A shortcut, shown"): the demo model, plain and with an image head, trained
# where chest drains go with pneumothorax (correlated) and where they do not (independent), on the same chests and
# masks; each evaluated on its own fold (tuning its thresholds), then scored with them on one test set where drains
# are independent, with heatmaps of the normal films that carry a drain. About 25 minutes on 2 CPU cores.
SHORTCUT_DIR ?= shortcut
SHORTCUT_CONTRAST ?= $(DEMO_CONTRAST)
SHORTCUT_DATA = --size $(DEMO_SIZE) --lesion_contrast $(SHORTCUT_CONTRAST) --lesion_scale $(DEMO_LESION_SCALE) --devices
SHORTCUT_correlated := --n $(DEMO_N) --seed 0 --drain_positive 0.9 --drain_negative 0.02
SHORTCUT_independent := --n $(DEMO_N) --seed 0 --drain_positive 0.3 --drain_negative 0.3
SHORTCUT_test := --n 200 --seed 7 --drain_positive 0.5 --drain_negative 0.5
SHORTCUT_MODELS ?= correlated independent correlated-headed independent-headed
SHORTCUT_FIGURE ?= $(SHORTCUT_DIR)/shortcut_heatmaps.png
shortcut_set = $(firstword $(subst -, ,$(1)))
# kept when make shortcut stops half-way, so that a rerun resumes
.PRECIOUS: $(SHORTCUT_DIR)/%/siim/train-rle.csv $(SHORTCUT_DIR)/models/%/model.pt

$(SHORTCUT_DIR)/%/siim/train-rle.csv: | $(VENV)/.runtime-installed
	$(PY) -m scripts.synthetic --out $(SHORTCUT_DIR)/$*/siim $(SHORTCUT_DATA) $(SHORTCUT_$*)

.SECONDEXPANSION:
$(SHORTCUT_DIR)/models/%/model.pt: $(SHORTCUT_DIR)/$$(call shortcut_set,$$*)/siim/train-rle.csv
	$(BUNDLE_RUN) --config_file "[$(TRAIN_CONFIGS),'configs/demo.json','configs/demo_train.json']" --bundle_root . \
		--dataset_dir $(SHORTCUT_DIR)/$(call shortcut_set,$*)/siim --datalist_file '$$None' --ckpt_dir $(@D) \
		--output_dir $(SHORTCUT_DIR)/runs/$*/train $(if $(findstring headed,$*),--network_config#image_head true)
	$(BUNDLE_RUN) --config_file "[$(TRAIN_CONFIGS),'configs/evaluate.json','configs/demo.json','configs/demo_train.json']" \
		--bundle_root . --dataset_dir $(SHORTCUT_DIR)/$(call shortcut_set,$*)/siim --datalist_file '$$None' \
		--ckpt_dir $(@D) --output_dir $(SHORTCUT_DIR)/runs/$*/eval

$(SHORTCUT_DIR)/runs/%/test/metrics.json: $(SHORTCUT_DIR)/models/%/model.pt $(SHORTCUT_DIR)/test/siim/train-rle.csv
	$(BUNDLE_RUN) --config_file "[$(INFERENCE_CONFIGS),'configs/demo.json','configs/demo_inference.json']" --bundle_root . \
		--dataset_dir $(SHORTCUT_DIR)/test/siim/dicom-images-train --output_dir $(SHORTCUT_DIR)/runs/$*/test_inference \
		--ckpt_dir $(SHORTCUT_DIR)/models/$* --overwrite true
	$(BUNDLE_RUN) --config_file "[$(TRAIN_CONFIGS),'configs/evaluate.json','configs/demo.json','configs/demo_train.json','configs/evaluate_heldout.json']" \
		--bundle_root . --dataset_dir $(SHORTCUT_DIR)/test/siim --ckpt_dir $(SHORTCUT_DIR)/models/$* --output_dir $(@D)

shortcut: $(foreach model,$(SHORTCUT_MODELS),$(SHORTCUT_DIR)/runs/$(model)/test/metrics.json)
	PYTHONPATH=. $(PY) -m scripts.synthetic.shortcut --dir $(SHORTCUT_DIR) --models $(SHORTCUT_MODELS) \
		--figure $(SHORTCUT_FIGURE)

clean-demo:
	rm -rf $(DEMO_DIR)
