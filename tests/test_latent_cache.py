"""The encode-once cache's fingerprint: what the cached tensors depend on, and nothing else."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from stableemote_utils.latent_cache import weights_fingerprint

SMALL_VAE = {
    "block_out_channels": [8],
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "latent_channels": 4,
    "norm_num_groups": 4,
    "layers_per_block": 1,
}


def _vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**SMALL_VAE)


def test_the_fingerprint_ignores_where_the_model_was_loaded_from():
    a, b = _vae(0), _vae(0)
    a.register_to_config(_name_or_path="/home/someone/.cache/stableemote/tinyemote/vae")
    b.register_to_config(_name_or_path="/builds/ci/checkout/.cache/stableemote/tinyemote/vae")
    assert weights_fingerprint(a) == weights_fingerprint(b)


def test_the_fingerprint_follows_the_weights_and_the_config():
    base = weights_fingerprint(_vae(0))
    assert weights_fingerprint(_vae(1)) != base  # other weights
    other = _vae(0)
    other.register_to_config(scaling_factor=0.5)
    assert weights_fingerprint(other) != base  # another config value
