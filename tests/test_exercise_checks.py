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


def _05_checks() -> dict:
    """Notebook 05's checks for exercises 2 to 5, with a stand-in for ``inspect_lora`` that
    reads a run's rank from its name."""
    import json
    from pathlib import Path

    def inspect_lora(path):
        rank = int(Path(path).stem.removeprefix("rank"))
        return {"ranks": [rank], "parameters": 1000 * rank}

    namespace = {"json": json, "Path": Path, "inspect_lora": inspect_lora}
    for name in ("last_heldout", *(f"check_exercise_{n}" for n in (2, 3, 4, 5))):
        exec(notebook_definition("05", name), namespace)
    return namespace


def _run(**fields):
    from types import SimpleNamespace

    defaults = {"heldout": {0: 0.24, 1500: 0.16}, "step": 1500, "stopped_early": False}
    return SimpleNamespace(**{**defaults, **fields})


def test_05_rank_checker_wants_twice_the_rank_and_the_right_count():
    check = _05_checks()["check_exercise_2"]
    ours = _run(adapter_path="rank16.safetensors")
    check(_run(adapter_path="rank32.safetensors"), 32_000, ours)
    with pytest.raises(AssertionError, match="twice"):
        check(_run(adapter_path="rank8.safetensors"), 8_000, ours)
    with pytest.raises(AssertionError, match="32,000"):
        check(_run(adapter_path="rank32.safetensors"), 16_000, ours)


def test_05_caption_dropout_checker_reads_the_runs_own_record(tmp_path):
    import json

    check = _05_checks()["check_exercise_3"]
    for dropout, folder in ((0.1, tmp_path / "on"), (0.0, tmp_path / "off")):
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"config": {"caption_dropout": dropout}}))
    check(_run(output_dir=tmp_path / "on"), _run())
    with pytest.raises(AssertionError, match="caption_dropout"):
        check(_run(output_dir=tmp_path / "off"), _run())
    with pytest.raises(AssertionError, match="as many steps"):
        check(_run(output_dir=tmp_path / "on", step=40), _run())


def test_05_resume_checker_wants_every_step_and_every_loss():
    check = _05_checks()["check_exercise_4"]
    check(_run(step=1540, losses=[0.1] * 1540), 1500)
    with pytest.raises(AssertionError, match="steps"):
        check(_run(step=1500, losses=[0.1] * 1500), 1500)
    with pytest.raises(AssertionError, match="one loss per step"):
        check(_run(step=1540, losses=[0.1] * 40), 1500)


def test_05_learning_rate_checker_compares_the_prediction_with_where_the_run_ended():
    check = _05_checks()["check_exercise_5"]
    ours = _run(heldout={0: 0.24, 1500: 0.16})
    near_base = _run(heldout={0: 0.24, 1500: 0.22})
    check(near_base, "base", ours)
    with pytest.raises(AssertionError, match="nearer base"):
        check(near_base, "this run", ours)
    with pytest.raises(AssertionError, match="predict"):
        check(near_base, "the base model", ours)
