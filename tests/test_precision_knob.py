"""One precision knob: ``$STABLEEMOTE_PRECISION`` (else the policy) for notebooks and training."""

from __future__ import annotations

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
