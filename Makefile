# Two commands do all setup: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch/torchvision resolve to the wheels on local disk (<= 2.14.1 / 0.29.1, see pyproject).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded real sample (UC Merced, 21 classes x 40 images, 64 px): the plain
# commands with their defaults (recipe "default": SE-ResNet18, augmentation, validation-split
# selection; compress: CAP (the model has SE blocks) at ratio 0.7), only fewer epochs than the
# defaults' 100 + 150 so that the demo takes minutes on 2 CPU cores. Then export both, compare
# (6 interleaved rounds: the fewest that give the speed-ups a 95 % interval; bench's default 10
# took 3 of the demo's 7 minutes).
RT := $(VENV)/bin/rtdeploy
DEMO_EPOCHS ?= 15
DEMO_FT_EPOCHS ?= 15
demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	$(RT) train --epochs $(DEMO_EPOCHS) --out $(DEMO_DIR)/base.pt --force
	$(RT) compress $(DEMO_DIR)/base.pt --epochs $(DEMO_FT_EPOCHS) --out $(DEMO_DIR)/pruned.pt --force
	$(RT) export $(DEMO_DIR)/base.pt --out $(DEMO_DIR)/base.onnx --data sample --force
	$(RT) export $(DEMO_DIR)/pruned.pt --out $(DEMO_DIR)/pruned.onnx --data sample --int8 --calib-data sample --force
	$(RT) bench $(DEMO_DIR)/base.onnx $(DEMO_DIR)/pruned.onnx $(DEMO_DIR)/pruned.int8.onnx --data sample \
		--batch-sizes 1,32 --threads 1 --runs 30 --rounds 6 --json $(DEMO_DIR)/bench.json --markdown $(DEMO_DIR)/bench.md --force

# Two test processes (pytest-xdist) on the 2-core CI machine: most tests wait on a real
# `python -m rtdeploy` process starting up, and one worker leaves a core idle meanwhile.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache
