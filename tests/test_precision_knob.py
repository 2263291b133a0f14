"""One precision knob: ``$STABLEEMOTE_PRECISION`` (else the policy) for notebooks and training."""

from __future__ import annotations

import os

import pytest
import torch

from stableemote_utils.notebook import notebook_setup
from stableemote_utils.presets import PRECISION_ENV_VAR, precision_setting


def test_the_argument_wins_then_the_environment_then_the_policy(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV_VAR, raising=False)
    assert precision_setting() is None
    monkeypatch.setenv(PRECISION_ENV_VAR, " bf16 ")
    assert precision_setting() == "bf16"
    assert precision_setting("fp32") == "fp32"


def test_notebook_config_cell_reads_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny-random")
    monkeypatch.setenv(PRECISION_ENV_VAR, "bf16")
    cfg = notebook_setup(device="cpu")
    assert cfg.dtype == torch.bfloat16
    assert f"precision: bf16 - bf16 because {PRECISION_ENV_VAR}=bf16." in capsys.readouterr().out
    monkeypatch.delenv(PRECISION_ENV_VAR)
    assert notebook_setup(device="cpu").dtype == torch.float32  # the policy on CPU


def test_sd15_without_a_gpu_stops_in_one_line(monkeypatch, capsys):
    """A Colab runtime without a GPU: the config cell says how to switch, before any download."""
    from stableemote_utils.errors import StableEmoteError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StableEmoteError) as err:
        notebook_setup("sd15")
    message = str(err.value)
    assert "Change runtime type" in message and "STABLEEMOTE_PRESET=tiny" in message
    # IPython shows the message alone, in one line, instead of a traceback.
    assert err.value._render_traceback_() == [f"StableEmoteError: {message}"]
    assert "\n" not in message
    assert capsys.readouterr().out == ""  # stopped before printing a config
    # Asking for the CPU on purpose is allowed (the full-size architecture on a CPU).
    assert notebook_setup("sd15", device="cpu").device.type == "cpu"


def test_the_config_cell_names_a_local_model_by_its_folder(monkeypatch, capsys):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny-random")
    cfg = notebook_setup(device="cpu")
    printed = capsys.readouterr().out
    assert cfg.preset.model not in printed  # the full path names this machine's folders
    assert f"model {os.path.basename(cfg.preset.model)} (a local folder)" in printed
