"""TinyEmote's pretraining: the VAE and full-UNet stages, deterministic and resumable."""

from __future__ import annotations

import hashlib

import pytest
import torch
from diffusers import UNet2DConditionModel

from stableemote_utils.tinyemote.pretrain import PretrainConfig, pretrain_tiny, psnr


def _digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def _quick(out) -> PretrainConfig:
    return PretrainConfig(
        output_dir=str(out),
        vae_steps=3,
        vae_batch_size=4,
        unet_steps=3,
        unet_batch_size=4,
        max_examples=8,
    )


def test_pretrain_is_deterministic_and_exports_a_loadable_model(tmp_path):
    from stableemote_utils.loading import load_components

    a = pretrain_tiny(_quick(tmp_path / "a"))
    pretrain_tiny(_quick(tmp_path / "b"))
    model = tmp_path / "a" / "tinyemote"
    assert _digests(model) == _digests(tmp_path / "b" / "tinyemote")
    assert set(_digests(model)) == {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    }
    assert a["device"] == "cpu" and a["seconds"] > 0
    # the UNet really trained: its weights differ from the random start
    start = load_components(str(tmp_path / "a" / "start")).unet.state_dict()
    end = UNet2DConditionModel.from_pretrained(tmp_path / "a" / "model-fp32", subfolder="unet")
    changed = [k for k, v in end.state_dict().items() if not torch.equal(v, start[k])]
    assert len(changed) > len(start) // 2


def test_psnr():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x).min() > 90
    noisy = x + 0.1
    assert 15 < float(psnr(x, noisy).mean()) < 30
    with pytest.raises(RuntimeError):
        psnr(x, x[:, :, :4])
