"""Shared fixtures: everything runs offline on the tiny preset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before torch is imported: idle OpenMP threads sleep rather than spin (shared 2-core CI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (make test: two workers), each worker gets its share of the cores and
# its own model and data cache: two processes filling one cache folder at once would
# replace each other's half-finished work.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    cache = os.environ.get("STABLEEMOTE_CACHE") or Path.home() / ".cache" / "stableemote"
    os.environ["STABLEEMOTE_CACHE"] = str(Path(cache) / WORKER)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("STABLEEMOTE_PRESET", "tiny")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny SD model in the course cache (built on first use)."""
    from stableemote_utils.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_components(tiny_model_dir):
    """Tiny model components on CPU in fp32 (shared: do not modify them in tests)."""
    from stableemote_utils.loading import load_components

    return load_components(str(tiny_model_dir))


class ShortRun:
    """The short training runs the tests make, as a Python config or as ``stableemote`` arguments.

    One set of settings (:data:`SETTINGS`) for both, so a test's Python run and its
    command-line run ask for the same thing; a test overrides only what it is about.
    """

    # A few steps of a rank-4 LoRA on the random tiny model, checkpoints every 2 steps,
    # validation only at the end.
    SETTINGS: dict = {
        "preset": "tiny-random",
        "device": "cpu",
        "steps": 4,
        "batch_size": 2,
        "checkpoint_every": 2,
        "validate_every": 1000,
        "learning_rate": 1e-3,
        "rank": 4,  # not the recipe's: the tests' checkpoint sizes and messages assume 4
    }
    # Settings the command line does not take: quiet, and a small held-out set and grid.
    PYTHON_SETTINGS: dict = {
        # the attention projections, as on SD 1.5 (lora_files.LORA_TARGET_MODULES)
        "target_modules": ("to_q", "to_k", "to_v", "to_out.0"),
        "progress_bar": False,
        "log_every": 1,
        "heldout_limit": 4,
        "validation_prompts": ("cat face",),
        "validation_steps": 2,
    }
    FLAGS = {"resolution_px": "--resolution", "stop_after_steps": "--stop-after"}

    def config(self, output_dir: str | os.PathLike, /, **overrides):
        """A :class:`~stableemote_utils.training_config.TrainConfig` (``tiny-quick`` recipe)."""
        from stableemote_utils.training_config import recipe

        settings = {"output_dir": str(output_dir), **self.SETTINGS, **self.PYTHON_SETTINGS}
        return recipe("tiny-quick", **{**settings, **overrides})

    def argv(self, output_dir: str | os.PathLike, /, *extra: str, **overrides) -> list[str]:
        """``["train", ...]`` for ``cli.main.main``; ``extra`` arguments come last (and win)."""
        argv = ["train", "--output-dir", str(output_dir)]
        for key, value in {**self.SETTINGS, **overrides}.items():
            argv += [self.FLAGS.get(key, "--" + key.replace("_", "-")), str(value)]
        return [*argv, *extra]


@pytest.fixture(scope="session")
def short_run() -> ShortRun:
    """Builds the tests' short training runs: ``short_run.config(out)``, ``short_run.argv(out)``."""
    return ShortRun()


@pytest.fixture(scope="session")
def tinyemote_dir() -> Path:
    """TinyEmote, the tiny preset's pretrained model, installed from the shipped weights."""
    from stableemote_utils.tinyemote.install import ensure_tinyemote

    return ensure_tinyemote()


@pytest.fixture(scope="session")
def tinyemote_pipe(tinyemote_dir):
    """A pipeline over TinyEmote on CPU in fp32 (shared: unload any LoRA you load)."""
    from stableemote_utils.loading import load_components, make_pipeline

    return make_pipeline(load_components(str(tinyemote_dir)))


_SLOW_FROM_STEP_TRAINER = """
import os, sys, time
from stableemote_utils import training
from stableemote_utils.cli.main import main
real, calls = training.noise_prediction_loss, []
def slow(*args, **kwargs):
    # From step SLOW_FROM on, each step takes SLOW_S seconds longer: a signal sent once the
    # step before it is checkpointed reaches the run in that step, however busy the machine.
    calls.append(1)
    if len(calls) >= int(os.environ.get("SLOW_FROM", "1")):
        time.sleep(float(os.environ.get("SLOW_S", "0")))
    return real(*args, **kwargs)
training.noise_prediction_loss = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="session")
def slow_trainer(tmp_path_factory) -> Path:
    """A script that runs ``stableemote`` with steps slowed from ``$SLOW_FROM`` by ``$SLOW_S`` s.

    For signals sent from outside (``python slow_trainer train ...``, or through
    ``accelerate launch``); without those variables it trains at full speed.
    """
    script = tmp_path_factory.mktemp("slow-trainer") / "slow_trainer.py"
    script.write_text(_SLOW_FROM_STEP_TRAINER)
    return script


def _sigterm_once_checkpointed(
    cmd: list[str], env: dict[str, str], folder: Path, step: int = 2, timeout_s: float = 600
) -> tuple[int, str]:
    """Run ``cmd``; once it has written ``folder``'s checkpoint of ``step``, send it SIGTERM.

    Returns:
        ``(exit status, stderr)``. The process is killed if it outlives the test.
    """
    import signal
    import subprocess
    import time

    checkpoint = folder / "checkpoints" / f"checkpoint-{step:06d}"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + timeout_s
        while not checkpoint.exists():
            assert proc.poll() is None, proc.stderr.read()[-4000:]
            assert time.time() < deadline, f"the run wrote no {checkpoint.name}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.fixture(scope="session")
def sigterm_once_checkpointed():
    """``sigterm_once_checkpointed(cmd, env, folder, step=2)``: run a training command and
    send it SIGTERM once its checkpoint of ``step`` exists; ``(exit status, stderr)``."""
    return _sigterm_once_checkpointed


def pytest_addoption(parser):
    parser.addoption(
        "--run-browser",
        action="store_true",
        help="also run the tests that drive the demo in headless Chromium (make test-browser)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-browser"):
        return
    skip = pytest.mark.skip(reason="drives a real browser: run `make test-browser`")
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(skip)
