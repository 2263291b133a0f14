"""Training in half precision, and validation that never costs a checkpoint.

bf16 on CPU goes through the same accelerate wrapper and autocast as fp16/bf16 on a GPU,
so these runs reproduce on CPU what a learner's GPU run does.
"""

from __future__ import annotations

import pytest

from stableemote_utils import training_records
from stableemote_utils.checkpoints import list_checkpoints
from stableemote_utils.training import train


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: these tests change it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def config(tmp_path, short_run):
    """``config(**overrides)``: 2 steps at 32 px into ``tmp_path / "run"``, validated at step 2."""
    settings = dict(
        dataset="openmoji",
        steps=2,
        resolution_px=32,
        validate_every=2,
        max_train_examples=4,
        heldout_limit=2,
    )
    return lambda **kw: short_run.config(tmp_path / "run", **{**settings, **kw})


@pytest.mark.slow
def test_bf16_training_writes_its_checkpoint_and_validation_grid(tmp_path, capsys, config):
    result = train(config(precision="bf16"))
    run = tmp_path / "run"
    assert result.step == 2 and not result.stopped_early
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["checkpoint-000002"]
    assert (run / "samples" / "step-000002.png").stat().st_size > 0
    assert "stableemote: warning" not in capsys.readouterr().err
    assert set(result.heldout) == {0, 2}


def test_a_failing_validation_is_reported_after_the_checkpoint_and_training_goes_on(
    tmp_path, monkeypatch, capsys, config
):
    seen = []

    def broken_grid(*args, **kwargs):
        seen.append([p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")])
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr(training_records, "_sample_grid", broken_grid)
    result = train(config(steps=4))
    assert result.step == 4 and result.adapter_path.exists()
    # The checkpoint of a step is on disk before that step's validation runs.
    assert seen == [["checkpoint-000002"], ["checkpoint-000002", "checkpoint-000004"]]
    err = capsys.readouterr().err
    assert "warning: the validation grid at step 2 failed (RuntimeError: the sampler broke)" in err
    assert "training goes on" in err
    assert not (tmp_path / "run" / "samples").exists()


def test_fp16_training_on_cpu_is_a_one_line_error(tmp_path, capsys, short_run):
    from stableemote_utils.cli.main import main

    code = main(short_run.argv(tmp_path / "run", "--precision", "fp16", steps=2))
    err = capsys.readouterr().err
    assert code == 2
    assert "stableemote: error: fp16 training needs a GPU" in err
    assert "--precision bf16" in err and "Traceback" not in err


def test_training_reads_the_precision_knob(tmp_path, capsys, monkeypatch, short_run):
    from stableemote_utils.cli.main import main

    monkeypatch.setenv("STABLEEMOTE_PRECISION", "fp16")
    assert main(short_run.argv(tmp_path / "run", steps=2)) == 2
    assert "fp16 training needs a GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_a_bf16_run_resumes_to_the_uninterrupted_result(tmp_path, config):
    """The resume a T4 or Ampere learner makes after a disconnect, in half precision: the
    LoRA weights are fp32 under bf16 autocast, so the tolerance is bf16's rounding of the
    largest weight (a different step order would move them by far more)."""
    import torch
    from safetensors.torch import load_file

    straight = train(config(precision="bf16", steps=4, output_dir=str(tmp_path / "straight")))
    first = train(config(precision="bf16", steps=4, stop_after_steps=2))
    assert first.stopped_early
    resumed = train(config(precision="bf16", steps=4), resume="latest")
    assert resumed.step == 4
    a, b = load_file(straight.adapter_path), load_file(resumed.adapter_path)
    assert a.keys() == b.keys()
    for key in a:
        tolerance = torch.finfo(torch.bfloat16).eps * float(a[key].abs().max())
        assert torch.allclose(a[key], b[key], atol=tolerance, rtol=0), key
    assert resumed.losses == pytest.approx(straight.losses, abs=torch.finfo(torch.bfloat16).eps)
