# StableEmote: `make demo` and `make test` set everything up on a fresh machine.
#
#   make demo   - create .venv, install, run the course's main job (tiny preset, CPU)
#   make test   - create .venv, install, run lint, unit tests and the notebooks (offline)
#   make lab    - install JupyterLab and open the notebooks (tiny preset unless you say otherwise)
#   make notebooks - re-execute the notebooks in place, storing their outputs (tiny, CPU, fp32)
#   make test-colab - install the course as a Colab notebook does, in a fresh venv, and run 01
#   make test-browser - drive `stableemote demo` in headless Chromium (a few minutes)
#   make notebooks-html - the stored notebooks as HTML, in outputs/notebooks/*.html
#   make test-sd15 - the real-size path on the full-size architecture, random weights (CPU)
#   make test-sdxl - the same for SDXL: published counts, one LoRA step, the kohya export (CPU)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pins torch to the CPU build on machines without a GPU (see .ci/constraints.txt).
CONSTRAINTS ?= .ci/constraints.txt
STAMP := $(VENV)/.stableemote-installed
OPEN_CLIP := open_clip_torch==3.3.0
# The browser test's driver: keep equal to the "browser" extra in pyproject.toml.
PLAYWRIGHT := playwright==1.65.2
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning: on a small, shared CPU a spinning
# thread can make each step ten times slower.
THREADS := OMP_WAIT_POLICY=PASSIVE
PYTEST_ARGS ?=
# make test: pytest-xdist workers for tests/, each with its share of the cores and its own cache.
TEST_WORKERS ?= 2
NBVAL_ARGS ?=

.PHONY: install demo test test-slow lab notebooks notebooks-html test-colab test-browser test-sd15 test-sdxl bench bench-gpu figures lint format clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	# CLIP's BPE vocabulary ships in this wheel; --no-deps keeps torchvision out.
	$(BIN)/python -m pip install -q --no-deps $(OPEN_CLIP)
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(THREADS) STABLEEMOTE_PRESET=$${STABLEEMOTE_PRESET:-tiny} $(BIN)/stableemote quickstart --output-dir outputs/demo

bench: install
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=$${STABLEEMOTE_PRESET:-tiny-random} $(BIN)/stableemote bench

# For a machine with a CUDA GPU (and a CUDA build of torch): both recipes on the full-size
# SD 1.5 architecture with random weights (no download) at batch 8, 256 px, in fp16 and in
# bf16 (s/step, images/s, peak GPU memory), then the FLOP floors to read them against.
BENCH_GPU := $(OFFLINE) $(THREADS) $(BIN)/stableemote bench --preset sd15-random --device cuda \
	--batch-size 8 --resolution 256 --steps 10 --warmup 3
# Then SDXL the same way at its T4 recipe's 1024 px, batch 1 (sdxl-random: the full-size
# architecture with random weights, built on first use, ~7 GB), and its FLOP and memory count.
BENCH_GPU_SDXL := $(OFFLINE) $(THREADS) $(BIN)/stableemote bench --preset sdxl-random --device cuda \
	--batch-size 1 --resolution 1024 --steps 5 --warmup 2
bench-gpu: install
	$(BENCH_GPU) --precision fp16 --original-precision fp16
	$(BENCH_GPU) --precision bf16 --original-precision bf16
	$(BIN)/stableemote bench --flops --batch-size 8 --resolution 256
	$(BENCH_GPU_SDXL) --precision fp16 --original-precision fp16
	$(BENCH_GPU_SDXL) --precision bf16 --original-precision bf16
	$(OFFLINE) $(BIN)/stableemote bench --flops --preset sdxl

figures: install
	$(BIN)/stableemote figures

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# One pytest run over TEST_WORKERS pytest-xdist workers: the notebooks under nbval (each
# re-run top to bottom in its own kernel, tiny preset, CPU, fp32, one thread, its text and
# pictures compared with the stored ones: notebooks/conftest.py) beside the unit tests in
# tests/. The stored outputs come from a native run (make notebooks); here the kernels run
# on AVX2 code paths (NBVAL_ISA=avx2), so every run checks them on a second instruction set.
# tests/test_notebooks_run.py runs some notebooks again in bf16, the half-precision path a
# GPU takes, where only their asserts count. Each part prints how long it took. Tests marked
# slow (whole training runs, the half-precision notebook runs, two processes, full-size SD 1.5
# parts) run in `make test-slow`, which CI runs after this.
NBVAL_ISA ?= avx2
test: install
	@start=$$(date +%s); $(MAKE) --no-print-directory lint || exit $$?; \
	echo "make test: lint took $$(( $$(date +%s) - start )) s"
	@start=$$(date +%s); \
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=tiny STABLEEMOTE_NBVAL_ISA=$(NBVAL_ISA) \
		$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup \
		-m "not slow" --nbval notebooks tests $(NBVAL_ARGS) $(PYTEST_ARGS); status=$$?; \
	echo "make test: notebooks (nbval, $(NBVAL_ISA) code paths) and unit tests took" \
		"$$(( $$(date +%s) - start )) s on $(TEST_WORKERS) workers"; exit $$status

# The tests marked slow: whole training runs (bf16 included), the notebooks re-run in bf16,
# two-process training, the TinyEmote builds repeated bit for bit, full-size SD 1.5 parts, and
# the longest integration tests (the bench, signals and kill -9 during training, reuse in pretrain-tiny).
# About as long again as make test; CI runs both.
test-slow: install
	@start=$$(date +%s); \
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=tiny \
		$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup \
		-m slow tests $(PYTEST_ARGS); status=$$?; \
	echo "make test-slow: took $$(( $$(date +%s) - start )) s on $(TEST_WORKERS) workers"; \
	exit $$status

# After changing a notebook (or code it shows), store its outputs again: every notebook, or
# those named (make notebooks NOTEBOOKS="03 04"). Cells whose re-run passes nbval's comparison
# keep their stored outputs, so running it twice changes no byte.
NOTEBOOKS ?=
notebooks: install
	$(OFFLINE) $(BIN)/python tests/notebook_outputs.py $(NOTEBOOKS)

notebooks-html: install
	$(BIN)/jupyter nbconvert --log-level WARN --to html --output-dir outputs/notebooks notebooks/*.ipynb
	@echo "stored notebooks as HTML: outputs/notebooks/*.html"

# JupyterLab (the "lab" extra) on the notebooks; the tiny preset runs offline on a CPU.
lab: install
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev,lab]"
	$(THREADS) STABLEEMOTE_PRESET=$${STABLEEMOTE_PRESET:-tiny} $(BIN)/jupyter lab notebooks/

# A fresh venv (.venv-colab) installed the way a notebook's first cell installs on Colab, from
# this checkout's git URL, then notebook 01 from a folder outside the checkout (a few minutes).
test-colab: install
	$(OFFLINE) $(THREADS) $(BIN)/python tests/colab_like_run.py

# Debian's Chromium (Playwright's own browser download is not used), the pinned Playwright
# that drives it, then tests/test_demo_browser.py; screenshots land in outputs/browser/.
test-browser: install
	@test -x /usr/bin/chromium || { SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		$$SUDO apt-get install -y -q chromium || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) $(PLAYWRIGHT)
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=tiny $(BIN)/python -m pytest -q -s --durations=5 \
		--run-browser tests/test_demo_browser.py $(PYTEST_ARGS)

# The full-size SD 1.5 architecture with random weights (built locally, no download), at
# batch 1 and 256 px on CPU: training with validation and checkpoints, a bit-identical
# resume, compare, lora inspect and the kohya export; prints times and peak memory. Takes
# minutes and ~5 GB of memory, so it is not part of `make test`.
test-sd15: install
	$(OFFLINE) $(THREADS) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} STABLEEMOTE_TEST_SD15=1 \
		$(BIN)/python -m pytest -q -s tests/test_sd15_end_to_end.py tests/test_sd15_architecture.py

# The full-size SDXL architecture with random weights (built locally from the published
# configs, ~7 GB in ~/.cache/stableemote/sdxl-random, no download) on CPU: the published
# parameter counts, one LoRA training step at 128 px in bf16 through `stableemote train`
# (held-out loss, validation grid, checkpoint), lora inspect and the kohya export with SGM
# names, read back by diffusers' SDXL LoRA reader; prints times and peak memory. Takes
# about 5 minutes (plus ~5 to build the model folder once) and ~14 GB of memory, so it is
# not part of `make test`.
test-sdxl: install
	$(OFFLINE) $(THREADS) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} STABLEEMOTE_TEST_SDXL=1 \
		$(BIN)/python -m pytest -q -s tests/test_sdxl_end_to_end.py

clean:
	rm -rf $(VENV) .venv-colab outputs notebooks/outputs .pytest_cache
