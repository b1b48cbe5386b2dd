# One command each: `make test` and `make demo` do the whole set-up on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: on these machines the pin resolves to the local CPU wheel
# (an unpinned torch would pull several GB of CUDA packages).
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo docs lint format bench bench-more bench-prune bench-quantize bench-distill bench-fuse bench-tabular bench-compress clean

$(STAMP): pyproject.toml
	@echo "set-up 1/4: a virtual environment in $(VENV) ($(PY) -m venv)"
	$(PY) -m venv $(VENV)
	@echo "set-up 2/4: the latest pip"
	$(BIN)/pip install --quiet --upgrade pip
	@echo "set-up 3/4: $(TORCH_PIN) (the CPU build; the largest download)"
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	@echo "set-up 4/4: slimfuse and its extras (dev, hf, mobile) in editable mode"
	$(BIN)/pip install --quiet -e '.[dev,hf,mobile]'
	touch $(STAMP)
	@echo "set-up done: source $(VENV)/bin/activate puts the slimfuse command on the PATH"

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: $(STAMP)
	@echo "demo: 5 members and their fusion (src/slimfuse/recipes/demo.yaml), then slimfuse compress (demo_compress.yaml), into runs/demo"
	$(BIN)/slimfuse demo --out runs/demo
	@echo "demo done: runs/demo/report.html (the report), runs/demo/model.onnx (the result)"

docs: $(STAMP)
	$(BIN)/python docs/gen_cli.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# every benchmark on this machine, one after the other (hours on 2 cores; each writes its own
# benchmarks/results/<name>.md and .json with the CPU it ran on)
bench: bench-prune bench-quantize bench-distill bench-fuse bench-tabular bench-compress bench-more

bench-more: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/quantize_weight_only.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/deep_compression.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/lowrank.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/deploy_mobile.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/standardize_wine.py
	$(BIN)/python benchmarks/train_members_parallel.py

bench-fuse: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_ensemble.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_weighted.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_soup.py
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python fuse_mutual.py

bench-tabular: $(STAMP)
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python tabular.py

# the peers (NNCF, Olive) run in their own environment, kept out of slimfuse's: .peers
# (torch pinned: the CPU wheel; Olive 0.13 imports requests without declaring it)
bench-compress: $(STAMP)
	test -x .peers/bin/python || $(PY) -m venv .peers
	.peers/bin/python -c "import nncf, olive" 2>/dev/null || .peers/bin/pip install --quiet nncf==3.4.0 onnx==1.23.2 onnxruntime==1.31.1 olive-ai==0.13.0 requests "$(TORCH_PIN)"
	cd benchmarks && OMP_NUM_THREADS=1 ../$(BIN)/python compress_cnn.py
	cd benchmarks && ../$(BIN)/python compress_minilm.py

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
	rm -rf runs site .pytest_cache build *.egg-info src/*.egg-info
