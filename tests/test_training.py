import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from stableemote_utils import training
from stableemote_utils.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
)
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.training import (
    batch_indices,
    min_snr_weights,
    step_generator,
    train,
    training_loss,
)


@pytest.fixture
def config(tmp_path, short_run):
    """``config(name="run", **overrides)``: 8 steps on TinyEmote into ``tmp_path / name``."""
    # Batch, device and learning rate as tiny-quick has them; checkpoints every 4 steps.
    settings = dict(
        preset="tiny",
        device=None,
        batch_size=None,
        steps=8,
        checkpoint_every=4,
        max_train_examples=16,
        log_every=2,
        lr_warmup_steps=2,
    )
    return lambda name="run", **kw: short_run.config(tmp_path / name, **{**settings, **kw})


def _weights(path):
    return load_file(path)


def test_batches_shard_the_data_without_overlap():
    n, bs, world = 20, 3, 2
    seen = []
    for step in range(3):
        a = batch_indices(step, bs, n, seed=0, process_index=0, world=world)
        b = batch_indices(step, bs, n, seed=0, process_index=1, world=world)
        assert not set(a.tolist()) & set(b.tolist())
        seen += a.tolist() + b.tolist()
    assert len(set(seen)) == len(seen) == 18  # one epoch: no example twice
    assert torch.equal(batch_indices(2, bs, n, 0, 1, world), batch_indices(2, bs, n, 0, 1, world))


def test_min_snr_weights_cap_low_noise_steps():
    from stableemote_utils.denoising import sd15_scheduler

    scheduler = sd15_scheduler()
    t = torch.arange(1000)
    w = min_snr_weights(t, scheduler, gamma=5.0)
    # diffusers' compute_snr squares sqrt(a) / sqrt(1 - a): a / (1 - a) to float32 rounding.
    ac = scheduler.alphas_cumprod.double()
    snr = ac / (1 - ac)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(w.double(), snr.clamp(max=5.0) / snr, rtol=4 * eps, atol=0)
    assert w[0] < 0.01  # SNR ~ 1000 at t = 0: a tiny weight
    assert w[999] == 1.0  # high noise: SNR < 5, weight exactly 1


class _ZeroUNet(torch.nn.Module):
    """Predicts zero noise: the per-example loss is the mean square of the drawn noise."""

    def forward(self, noisy, t, encoder_hidden_states):
        self.t = t
        return SimpleNamespace(sample=torch.zeros_like(noisy))


def test_training_loss_weights_each_example_by_min_snr():
    from stableemote_utils.denoising import sd15_scheduler

    scheduler, unet = sd15_scheduler(), _ZeroUNet()
    mean, std, text = torch.randn(6, 4, 8, 8), torch.rand(6, 4, 8, 8), torch.randn(6, 77, 8)

    def loss(gamma):
        return training_loss(unet, mean, std, text, scheduler, step_generator(0, 3), gamma)

    plain = loss(None)
    # The same draws with weights: recompute the per-example noise from the same generator.
    g = step_generator(0, 3)
    torch.randn(mean.shape, generator=g)  # the latent sample
    noise = torch.randn(mean.shape, generator=g)
    per_example = noise.pow(2).mean(dim=(1, 2, 3))
    assert plain.item() == pytest.approx(per_example.mean().item(), rel=1e-6)
    weighted = loss(5.0)
    expected = (per_example * min_snr_weights(unet.t, scheduler, 5.0)).mean()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted < plain
    assert torch.equal(loss(1e9), plain), "gamma above every SNR: every weight is 1"


def test_optimizer_state_round_trips_through_safetensors():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn_like(p)
    opt.step()
    tensors, rest = optimizer_to_tensors(opt.state_dict())
    json.dumps(rest)
    back = optimizer_from_tensors(tensors, json.loads(json.dumps(rest)))
    assert torch.equal(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_resume_reproduces_the_uninterrupted_run(tmp_path, config):
    straight = train(config("straight"))
    first = train(config("resumed", stop_after_steps=4))
    assert first.stopped_early and first.adapter_path is None
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == [
        "checkpoint-000004"
    ]
    second = train(config("resumed"), resume="latest")
    assert second.step == 8
    a, b = _weights(straight.adapter_path), _weights(second.adapter_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert second.losses == pytest.approx(straight.losses, abs=1e-6)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k), "training moved B"


def test_raising_the_step_count_on_resume(tmp_path, config):
    train(config(steps=4))
    result = train(config(steps=8), resume="latest")
    assert result.step == 8 and not result.stopped_early
    state, *_ = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 8
    assert len(state["losses"]) == 8


def test_resume_refuses_other_settings(tmp_path, config):
    train(config(stop_after_steps=4))
    with pytest.raises(StableEmoteError, match="rank: 4 -> 8"):
        train(config(rank=8), resume="latest")


@pytest.mark.slow
def test_damaged_and_half_written_checkpoints_are_not_resumed(tmp_path, capsys, config):
    train(config(stop_after_steps=8, checkpoint_every=2, keep_checkpoints=5))
    ckpts = tmp_path / "run" / "checkpoints"
    newest = list_checkpoints(ckpts)[-1]
    assert newest.name == "checkpoint-000008"
    # A run killed while writing leaves a temporary folder; Drive sync can truncate a file.
    half = ckpts / ".checkpoint-000010.tmp-999"
    shutil.copytree(newest, half)
    weights = newest / "pytorch_lora_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert latest_checkpoint(ckpts).name == "checkpoint-000006"
    assert "skipping damaged checkpoint" in capsys.readouterr().err
    result = train(config(steps=8, checkpoint_every=2), resume="latest")
    assert result.step == 8


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, config):
    real = training.noise_prediction_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(training, "noise_prediction_loss", flaky)
    with pytest.raises(StableEmoteError, match=r"became nan at step 6.*checkpoint-000004"):
        train(config())
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-000004"]
    assert not (tmp_path / "run" / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.slow
def test_heldout_loss_goes_down_with_training(tmp_path, config):
    result = train(config(steps=40, checkpoint_every=40, max_train_examples=64))
    assert result.heldout[40] < result.heldout[0]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "run" / "samples" / "step-000040.png").exists()
    card = (tmp_path / "run" / "README.md").read_text()
    dataset = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["dataset"]
    assert "Held-out loss" in card and f"Data: `{dataset}`" in card


@pytest.mark.slow
def test_wandb_offline_writes_its_run(tmp_path, monkeypatch, config):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(config(steps=2, checkpoint_every=2, report_to="wandb"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run should hold its log file"


def test_unwritable_output_dir_fails_before_loading(tmp_path, config):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StableEmoteError, match="Cannot write to the output folder"):
        train(config(output_dir=str(blocker / "sub")))


def test_dataset_smaller_than_a_batch(tmp_path, config):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(data / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"square {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(rows))
    with pytest.raises(StableEmoteError, match="fewer than one batch"):
        train(config(dataset=str(data), max_train_examples=None))


def test_missing_dataset_is_a_clear_error(tmp_path, config):
    with pytest.raises(StableEmoteError, match="not a folder|does not exist|Could not load"):
        train(config(dataset=str(tmp_path / "missing")))


def test_tensorboard_logging_writes_events(tmp_path, config):
    train(config(steps=2, checkpoint_every=2, report_to="tensorboard"))
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
