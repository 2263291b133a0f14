"""Full training mode: every UNet weight trains, checkpoints hold the whole UNet, resume is exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from stableemote_utils.training import train


@pytest.fixture
def config(short_run):
    """``config(out, **overrides)``: 4 steps training every UNet weight into ``out``."""
    settings = dict(
        mode="full",
        max_train_examples=8,
        lr_warmup_steps=0,
        validate_every=100,
    )
    return lambda out, **kw: short_run.config(out, **{**settings, **kw})


@pytest.mark.slow
def test_full_training_saves_a_whole_unet_and_resumes_exactly(tmp_path, config):
    from diffusers import UNet2DConditionModel

    whole = train(config(tmp_path / "whole"))
    assert whole.adapter_path.name == "diffusion_pytorch_model.safetensors"
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "whole" / "unet")
    assert sum(p.numel() for p in unet.parameters()) > 1_000_000
    ckpt = tmp_path / "whole" / "checkpoints" / "checkpoint-000002" / "unet.safetensors"
    assert len(load_file(ckpt)) == len(unet.state_dict())
    assert not (tmp_path / "whole" / "pytorch_lora_weights.safetensors").exists()

    first = train(config(tmp_path / "split", stop_after_steps=2))
    assert first.stopped_early
    second = train(config(tmp_path / "split"), resume="latest")
    a, b = load_file(whole.adapter_path), load_file(second.adapter_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mode_is_checked(tmp_path, config):
    from stableemote_utils.errors import StableEmoteError

    with pytest.raises(StableEmoteError, match="mode"):
        train(config(tmp_path, mode="half"))
    with pytest.raises(StableEmoteError, match="push"):
        train(config(tmp_path, push_to_hub="me/x"))
