import hashlib

import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from stableemote_utils.loading import make_pipeline
from stableemote_utils.tiny_model import TINY_VAE_CONFIG, build_tiny_model


def test_layout_matches_the_hub_repo(tiny_model_dir):
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / sub).is_dir(), sub
    assert (tiny_model_dir / "model_index.json").exists()
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(tiny_model_dir.rglob("*.bin")), "weights must be safetensors only"


def test_tokenizer_gives_real_clip_ids(tiny_model_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77


def test_scheduler_has_sd15_settings(tiny_components):
    config = tiny_components.scheduler.config
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    assert config.beta_schedule == "scaled_linear"
    assert config.num_train_timesteps == 1000
    assert config.steps_offset == 1


def test_build_is_deterministic(tmp_path):
    a = build_tiny_model(tmp_path / "a")
    b = build_tiny_model(tmp_path / "b")
    for part in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        wa, wb = load_file(a / part), load_file(b / part)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = build_tiny_model(tmp_path / "c", seed=1)
    digest = hashlib.sha256((c / "unet/diffusion_pytorch_model.safetensors").read_bytes())
    assert (
        digest.hexdigest()
        != hashlib.sha256((a / "unet/diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    )


def test_build_does_not_touch_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_generates_an_image_of_the_right_size(tiny_components):
    pipe = make_pipeline(tiny_components)
    size = TINY_VAE_CONFIG["sample_size"]
    out = pipe(
        "An emoji of a cat",
        num_inference_steps=2,
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images[0].size == (size, size)
    assert out.nsfw_content_detected is None  # the safety checker is off


def test_unet_has_cross_attention_blocks(tiny_components):
    unet = tiny_components.unet
    assert "CrossAttnDownBlock2D" in unet.config.down_block_types
    assert "CrossAttnUpBlock2D" in unet.config.up_block_types
    assert unet.config.cross_attention_dim == tiny_components.text_encoder.config.hidden_size
    assert tiny_components.vae.config.latent_channels == 4
