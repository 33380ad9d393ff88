# busi: every target works on a fresh clone; the first one that needs Python makes .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# data and model locations (override: make train DATA=/path/to/Dataset_BUSI_with_GT OUT=models/busi)
DATA     ?= data/phantoms
OUT      ?= models/demo
WEIGHTS  ?= imagenet
EPOCHS   ?=
MASK     ?= box
SIZE     ?= 224
PER_CLASS ?= 60
SEED     ?= 0
TRAIN_ARGS ?=
# busi-infer exits 3 when --mask auto abstained on some images (needs_roi records): expected in the demo
AUTO_OK = || [ $$? -eq 3 ]
# the demo: phantoms, trained from scratch at a small size so it runs in minutes on 2 cores
DEMO_DATA ?= data/phantoms
DEMO_OUT  ?= models/demo
DEMO_ARGS ?= --weights none --image-size 96 --epochs 30 --near-ood tests/data/busi-sample
SEG_ARGS  ?=
DEMO_SEG_ARGS ?= --image-size 64
PYDICOM_TESTS = $(shell $(BIN)/python -c 'import pathlib, pydicom.data; print(pathlib.Path(pydicom.data.__file__).parent / "test_files")')

# the whole real-data pipeline (docs/results.md, "Results on real BUSI"): full BUSI + ImageNet weights
REAL_OUT ?= models/real
REAL_FIT_ARGS ?=
REAL_SEG_ARGS ?= --image-size 128

.PHONY: real install data train segmenter export demo test test-fast test-deps fuzz bench clean help
FUZZ_EXAMPLES ?= 20000

help:
	@echo "make demo   - phantoms -> train -> report -> ONNX export -> busi-infer (minutes, CPU)"
	@echo "make test   - the test suite"
	@echo "make test-fast - the tests that need no trained model (-m 'not slow')"
	@echo "make test-deps - Orthanc and dcmtk for the busi-node tests (apt-get, as root)"
	@echo "make fuzz   - property-based fuzzing of the decoders and the API (FUZZ_EXAMPLES=20000)"
	@echo "make train DATA=/path/to/Dataset_BUSI_with_GT [WEIGHTS=imagenet|none|file.h5] [OUT=models/busi]"
	@echo "make real DATA=/path/to/Dataset_BUSI_with_GT WEIGHTS=file.h5 [SEED=1] - fit, segmenter, export, the table in docs/results.md (hours on 2 cores)"
	@echo "make segmenter DATA=... OUT=...   (lesion segmenter for --mask auto, on the classifier's split)"
	@echo "make export [OUT=models/demo]   make bench [OUT=models/demo]   make clean"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,dev,dicom,node,serve,openvino]'
	touch $@

install: $(BIN)/.installed

$(DEMO_DATA)/.done: | $(BIN)/.installed
	$(BIN)/busi-train phantoms --out $(DEMO_DATA) --per-class $(PER_CLASS) --seed $(SEED)
	touch $@

data: $(DEMO_DATA)/.done

train: $(BIN)/.installed $(if $(filter $(DATA),$(DEMO_DATA)),$(DEMO_DATA)/.done)
	$(BIN)/busi-train fit --data $(DATA) --out $(OUT) --weights $(WEIGHTS) --mask-source $(MASK) \
		--image-size $(SIZE) --seed $(SEED) $(if $(EPOCHS),--epochs $(EPOCHS)) $(TRAIN_ARGS)

segmenter: $(BIN)/.installed $(if $(filter $(DATA),$(DEMO_DATA)),$(DEMO_DATA)/.done)
	$(BIN)/busi-train segmenter --data $(DATA) --out $(OUT) --seed $(SEED) $(SEG_ARGS)

export: $(BIN)/.installed
	$(BIN)/busi-export $(OUT) --int8 --allow-int8-refusal

# make real DATA=/path/to/Dataset_BUSI_with_GT WEIGHTS=/path/to/resnet50_..._notop.h5: fit (the default
# recipe), the lesion segmenter on the same split (auto is then evaluated next to gt/box/none), export
# with the INT8 gate, and the real-data table in docs/results.md from the run's report.json
real: $(BIN)/.installed
	@test -d "$(DATA)" -a "$(DATA)" != "$(DEMO_DATA)" || { echo "make real needs DATA=/path/to/Dataset_BUSI_with_GT (and WEIGHTS=PATH.h5 without network)"; exit 2; }
	$(BIN)/busi-train fit --data $(DATA) --out $(REAL_OUT) --weights $(WEIGHTS) --seed $(SEED) $(REAL_FIT_ARGS)
	$(BIN)/busi-train segmenter --data $(DATA) --out $(REAL_OUT) --seed $(SEED) $(REAL_SEG_ARGS)
	$(BIN)/busi-export $(REAL_OUT) --int8 --allow-int8-refusal
	$(BIN)/busi-train report $(REAL_OUT) --readme docs/results.md --block real

demo: $(BIN)/.installed $(DEMO_DATA)/.done
	$(BIN)/busi-train fit --data $(DEMO_DATA) --out $(DEMO_OUT) --seed $(SEED) $(DEMO_ARGS)
	$(BIN)/busi-train segmenter --data $(DEMO_DATA) --out $(DEMO_OUT) --seed $(SEED) $(DEMO_SEG_ARGS)
	$(BIN)/busi-export $(DEMO_OUT) --int8 --allow-int8-refusal
	$(BIN)/busi-train phantoms --out $(DEMO_DATA)-new --per-class 2 --seed 2026 --dicom $(DEMO_DATA)-new-dicom
	@echo "busi-infer on new phantoms (never seen in training): lesions with the box of their mask,"
	@echo "normal images with a box drawn over the gland, as a user at the scanner would:"
	$(BIN)/busi-infer $(DEMO_DATA)-new/benign $(DEMO_DATA)-new/malignant --mask $(DEMO_DATA)-new \
		--model $(DEMO_OUT)/model.onnx --format table
	$(BIN)/busi-infer $(DEMO_DATA)-new/normal --roi 150,150,100,80 --model $(DEMO_OUT)/model.onnx --format table
	@echo "the same new phantoms with --mask auto (the lesion segmenter finds the lesion), with an HTML report:"
	$(BIN)/busi-infer $(DEMO_DATA)-new --mask auto --model $(DEMO_OUT)/model.onnx --format table \
		--report $(DEMO_OUT)/cases.html --explain $(DEMO_OUT)/gradcam $(AUTO_OK)
	@echo "the same phantoms as a DICOM study from a PACS (files without extension): a Structured Report, an overlay"
	@echo "(Secondary Capture) and a SEG of the found lesion per image, and one summary line for the study:"
	$(BIN)/busi-infer $(DEMO_DATA)-new-dicom --mask auto --model $(DEMO_OUT)/model.onnx --format table --by study \
		--dicom-out $(DEMO_OUT)/dicom-out $(AUTO_OK)
	@echo "images that are not breast ultrasound (pydicom's CT and MR test files), classified anyway with --allow-modality (busi-infer refuses them by default): the out-of-distribution guard flags them (ood OOD):"
	$(BIN)/busi-infer $(PYDICOM_TESTS)/CT_small.dcm $(PYDICOM_TESTS)/MR_small.dcm --allow-modality --mask none --model $(DEMO_OUT)/model.onnx --format table
	@echo "look at them: dsrdump $(DEMO_OUT)/dicom-out/*.sr.dcm (dcmtk), dcmdump ..., or highdicom: hd.sr.srread(path)"
	@echo "another hospital's scanner (site B phantoms: gain, dynamic range, speckle, resolution, text, calipers, near-field"
	@echo "artefacts), never seen in training: busi-train evaluate, all four mask sources and the segmenter:"
	$(BIN)/busi-train phantoms --out $(DEMO_DATA)-site-b --per-class 20 --seed 7 --site B
	$(BIN)/busi-train evaluate $(DEMO_OUT) --data $(DEMO_DATA)-site-b --out $(DEMO_OUT)/eval-site-b
	$(BIN)/busi-infer $(DEMO_DATA)-site-b/benign --mask auto --model $(DEMO_OUT)/model.onnx --format table $(AUTO_OK)
	@echo "held-out results (test split of the phantoms, site A; mask sources side by side):"
	@$(BIN)/busi-train report $(DEMO_OUT)
	@echo "models: $$(cd $(DEMO_OUT) && ls *.onnx | tr '\n' ' ')(in $(DEMO_OUT), with card.json and segmenter.json)"
	@echo "report: $(DEMO_OUT)/report.md   cases: $(DEMO_OUT)/cases.html   Grad-CAM: $(DEMO_OUT)/gradcam/   DICOM: $(DEMO_OUT)/dicom-out/"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# the system packages the DICOM-node tests use: a real PACS (Orthanc) and dcmtk (storescu,
# echoscu as the scanner). Installed with apt-get when run as root; otherwise it says what to
# run, and those tests are skipped with the same words.
test-deps:
	@if command -v Orthanc >/dev/null && command -v storescu >/dev/null; then \
		echo "test-deps: $$(Orthanc --version | head -1), dcmtk $$(storescu --version | head -1 | awk '{print $$3}')"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc dcmtk >/dev/null) \
			|| echo "test-deps: apt-get could not install orthanc dcmtk; the busi-node tests will be skipped"; \
	else \
		echo "test-deps: Orthanc and dcmtk are missing; as root: apt-get install orthanc dcmtk (the busi-node tests are skipped without them)"; \
	fi

# everything that does not need the trained model folder (tests marked slow are left out)
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# the property-based fuzz tests with many more (random) examples than the suite's fixed 300
fuzz: $(BIN)/.installed
	BUSI_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) BUSI_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py $(OUT)

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DATA) $(DEMO_DATA)-new $(DEMO_DATA)-new-dicom $(DEMO_DATA)-site-b models/demo .pytest_cache
