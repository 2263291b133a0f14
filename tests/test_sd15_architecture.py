"""The sd15 preset's shapes, tested without its weights: full-size SD 1.5 with random weights."""

import pytest
import torch

from stableemote_utils.tiny_model import build_sd15_components, sd15_config


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.slow
def test_full_size_sd15_parameter_counts():
    unet, vae, text_encoder = build_sd15_components()
    assert _count(unet) == 859_520_964
    assert _count(vae) == 83_653_863
    assert _count(text_encoder) == 123_060_480
    assert vae.config.scaling_factor == 0.18215
    assert text_encoder.config.hidden_size == unet.config.cross_attention_dim == 768
    # One denoising call at a small size: the UNet maps latents to same-shaped noise.
    with torch.no_grad():
        latents = torch.randn(1, 4, 8, 8)
        text = torch.randn(1, 77, 768)
        out = unet(latents, 10, encoder_hidden_states=text).sample
    assert out.shape == latents.shape
    del unet, vae, text_encoder


def test_sd15_configs_are_the_published_ones():
    unet = sd15_config("unet")
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["cross_attention_dim"] == 768
    assert sd15_config("vae")["latent_channels"] == 4
    assert sd15_config("scheduler")["beta_schedule"] == "scaled_linear"
