"""Full training mode: every UNet weight trains, checkpoints hold the whole UNet, resume is exact."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from stableemote_utils.training import TrainConfig, train


def _config(out, **kw) -> TrainConfig:
    base = dict(
        preset="tiny-random",
        mode="full",
        output_dir=str(out),
        steps=4,
        batch_size=2,
        learning_rate=1e-3,
        checkpoint_every=2,
        validate_every=100,
        max_train_examples=8,
        heldout_limit=4,
        log_every=1,
        progress_bar=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_full_training_saves_a_whole_unet_and_resumes_exactly(tmp_path):
    from diffusers import UNet2DConditionModel

    whole = train(_config(tmp_path / "whole"))
    assert whole.adapter_path.name == "diffusion_pytorch_model.safetensors"
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "whole" / "unet")
    assert sum(p.numel() for p in unet.parameters()) > 1_000_000
    ckpt = tmp_path / "whole" / "checkpoints" / "checkpoint-000002" / "unet.safetensors"
    assert len(load_file(ckpt)) == len(unet.state_dict())
    assert not (tmp_path / "whole" / "pytorch_lora_weights.safetensors").exists()

    first = train(_config(tmp_path / "split", stop_after_steps=2))
    assert first.stopped_early
    second = train(_config(tmp_path / "split"), resume="latest")
    a, b = load_file(whole.adapter_path), load_file(second.adapter_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mode_is_checked(tmp_path):
    import pytest

    from stableemote_utils.errors import StableEmoteError

    with pytest.raises(StableEmoteError, match="mode"):
        train(_config(tmp_path, mode="half"))
    with pytest.raises(StableEmoteError, match="push"):
        train(_config(tmp_path, push_to_hub="me/x"))
