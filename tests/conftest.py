"""Shared fixtures: everything runs offline on the tiny preset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before torch is imported: idle OpenMP threads sleep rather than spin (shared 2-core CI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
