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

# The main job on the embedded real sample (UC Merced, 21 classes x 40 images, 64 px):
# train the paper's SE-ResNet18, prune 70 % of channels with CAP + AML, export both, compare.
RT := $(VENV)/bin/rtdeploy
DEMO_EPOCHS ?= 15
DEMO_FT_EPOCHS ?= 10
demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	$(RT) train --arch resnet18_se --img-size 64 --epochs $(DEMO_EPOCHS) --lr 0.1 --schedule onecycle \
		--augment --seed 0 --out $(DEMO_DIR)/base.pt --force
	$(RT) compress $(DEMO_DIR)/base.pt --criterion cap --ratio 0.7 --round-to 8 --loss aml \
		--epochs $(DEMO_FT_EPOCHS) --lr 0.02 --out $(DEMO_DIR)/cap70.pt --force
	$(RT) export $(DEMO_DIR)/base.pt --out $(DEMO_DIR)/base.onnx --data sample --force
	$(RT) export $(DEMO_DIR)/cap70.pt --out $(DEMO_DIR)/cap70.onnx --data sample --int8 --calib-data sample --force
	$(RT) bench $(DEMO_DIR)/base.onnx $(DEMO_DIR)/cap70.onnx $(DEMO_DIR)/cap70.int8.onnx --data sample \
		--batch-sizes 1,32 --threads 1 --runs 50 --json $(DEMO_DIR)/bench.json --markdown $(DEMO_DIR)/bench.md

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
