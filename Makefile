# One command each: `make test` and `make demo` do the whole set-up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: on these machines the pin resolves to the local CPU wheel
# (an unpinned torch would pull several GB of CUDA packages).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo lint format bench bench-prune bench-quantize bench-distill bench-fuse clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e '.[dev,hf,mobile]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/slimfuse demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench-fuse: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_ensemble.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_weighted.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_soup.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_mutual.py

bench-prune: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python prune_unstructured.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python prune_structured.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python prune_minilm.py

bench-distill: $(STAMP)
	$(BIN)/python benchmarks/distill_mnist1d.py
	$(BIN)/python benchmarks/distill_ddp.py
	$(BIN)/python benchmarks/distill_minilm.py

bench-quantize: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python quantize_cnn.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python quantize_qat.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python quantize_minilm.py

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
