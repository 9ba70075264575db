# Two commands from a fresh clone: `make demo` and `make test` (both create .venv once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.videoft-installed
DEMO_DATA ?= data/demo
DEMO_RUN ?= runs/demo

.PHONY: install demo demo-data lint test test-fast benchmark gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e ".[test,export]"
	@touch $(STAMP)

install: $(STAMP)

# Always asks the generator: it returns at once when the dataset is complete and current,
# and regenerates one left by an older generator version.
demo-data: $(STAMP)
	$(BIN)/python tools/make_demo_dataset.py --out $(DEMO_DATA)

demo: $(STAMP) demo-data
	$(BIN)/python tools/train.py configs/demo.yaml data.root=$(DEMO_DATA) out_dir=$(DEMO_RUN)
	$(BIN)/python tools/evaluate.py $(DEMO_RUN)/best.pt --data $(DEMO_DATA) --split test --out $(DEMO_RUN)/eval
	@echo "checkpoint: $(DEMO_RUN)/best.pt   report: $(DEMO_RUN)/eval/report.html"

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

benchmark: $(STAMP)
	$(BIN)/python tools/benchmark.py

# On a machine with a GPU: bf16 + channels_last, torchrun/NCCL epoch + resume + evaluate, export,
# throughput (see tools/gpu_check.py). Without CUDA it says so and exits 0.
gpu-check: $(STAMP)
	$(BIN)/python tools/gpu_check.py

clean:
	rm -rf $(DEMO_RUN) .pytest_cache
