# StableEmote: `make demo` and `make test` set everything up on a fresh machine.
#
#   make demo   - create .venv, install, run the course's main job (tiny preset, CPU)
#   make test   - create .venv, install, run lint, unit tests and the notebooks (offline)
#   make test-browser - drive `stableemote demo` in headless Chromium (a few minutes)
#   make notebooks-html - execute the notebooks (tiny preset) into outputs/notebooks/*.html
#   make test-sd15 - the real-size path on the full-size architecture, random weights (CPU)

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
# make test: pytest-xdist workers, each with its share of the cores and its own cache. The
# notebooks stay together, in order, on one of them (tests/test_notebooks_run.py).
TEST_WORKERS ?= 2

.PHONY: install demo test notebooks-html test-browser test-sd15 bench bench-gpu figures lint format clean

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
bench-gpu: install
	$(BENCH_GPU) --precision fp16 --original-precision fp16
	$(BENCH_GPU) --precision bf16 --original-precision bf16
	$(BIN)/stableemote bench --flops --batch-size 8 --resolution 256

figures: install
	$(BIN)/stableemote figures

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The notebooks run once, inside tests/ (tests/test_notebooks_run.py), which also writes
# them to outputs/notebooks/*.html; notebooks 03-05 run there in bf16 (STABLEEMOTE_PRECISION),
# the half-precision path a GPU takes, the others in fp32.
test: lint
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=tiny $(BIN)/python -m pytest -q --durations=15 \
		-n $(TEST_WORKERS) --dist loadgroup tests $(PYTEST_ARGS)

notebooks-html: install
	$(OFFLINE) $(THREADS) STABLEEMOTE_PRESET=$${STABLEEMOTE_PRESET:-tiny} $(BIN)/python -m pytest -q \
		tests/test_notebooks_run.py $(PYTEST_ARGS)
	@echo "executed notebooks: outputs/notebooks/*.html"

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

clean:
	rm -rf $(VENV) outputs .pytest_cache
