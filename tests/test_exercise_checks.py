"""The notebooks' exercise checkers reject wrong answers and accept the right one.

These checks used to run inside the notebooks, in the learner's view; they test the
checkers, not the learner, so they live here. Each checker is read from its notebook.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from lesson_code import notebook_definition

from stableemote_utils.training import min_snr_weights


def _checker(notebook: str, namespace: dict):
    exec(notebook_definition(notebook, "check_exercise_1"), namespace)
    return namespace["check_exercise_1"]


def test_05_min_snr_checker():
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    probe = torch.tensor([10, 50, 100, 200, 500, 990])
    check = _checker(
        "05",
        {
            "probe_timesteps": probe,
            "noise_scheduler": scheduler,
            "min_snr_weights": min_snr_weights,
        },
    )
    a_bar = scheduler.alphas_cumprod[probe]
    right = {
        t for t, snr in zip(probe.tolist(), (a_bar / (1 - a_bar)).tolist(), strict=True) if snr > 5
    }
    assert right and right != set(probe.tolist())  # a real choice: some but not all
    weights = check(right)
    assert all((weights[t] < 1) == (t in right) for t in probe.tolist())
    for wrong in (set(), set(probe.tolist()), right | {990}, right - {min(right)}):
        with pytest.raises(AssertionError):
            check(wrong)


def _record(guidance: float, differ: str | None = None) -> dict:
    shared = dict(
        prompt="An emoji of fairy",
        seed=0,
        generator="cpu",
        steps=25,
        guidance=guidance,
        resolution_px=64,
        scheduler={"class": "PNDMScheduler"},
    )
    lora = {**shared, "model": "lora"}
    if differ:
        lora[differ] = 1
    return {"images": [{**shared, "model": "base"}, lora]}


def test_06_guidance_checker():
    check = _checker("06", {})
    check(_record(1.0))
    for wrong in (_record(3.0), _record(1.0, differ="seed"), {"images": []}):
        with pytest.raises(AssertionError):
            check(wrong)
