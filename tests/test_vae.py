"""Tests for stableemote_utils.vae: shapes, scaling, PSNR, cost estimates, the figure."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils import figures
from stableemote_utils import vae as V
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import IMAGES_DIR
from stableemote_utils.tiny_model import TINY_UNET_CONFIG, TINY_VAE_CONFIG, sd15_config


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


def test_latent_shape_and_compression_for_sd15():
    config = sd15_config("vae")
    assert V.downsample_factor(config) == 8
    assert V.latent_shape(config, 512) == (4, 64, 64)
    assert V.latent_shape(config, 256) == (4, 32, 32)
    for side in (256, 512):
        expected = side * side * 3 / (4 * (side // 8) ** 2)
        assert V.compression_factor(config, side) == pytest.approx(expected)
    assert V.compression_factor(config, 512) == pytest.approx(48.0)


def test_latent_shape_rejects_sizes_that_do_not_divide():
    with pytest.raises(StableEmoteError, match="multiple of 8"):
        V.latent_shape(sd15_config("vae"), 100)


def test_encode_decode_shapes_and_scaling(tiny_vae):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    dist = V.encode_to_latent_dist(tiny_vae, pixels)
    assert dist.mean.shape == (2, 4, 8, 8)
    assert dist.std.shape == (2, 4, 8, 8)
    scale = tiny_vae.config.scaling_factor
    latents = V.encode(tiny_vae, pixels, sample=False)
    torch.testing.assert_close(latents, dist.mean * scale)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(V.encode(tiny_vae, pixels, g1), V.encode(tiny_vae, pixels, g2))
    assert not torch.equal(V.encode(tiny_vae, pixels, torch.Generator().manual_seed(2)), latents)
    out = V.decode(tiny_vae, latents)
    assert out.shape == pixels.shape
    assert out.dtype == torch.float32
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    # decode divides by the scaling factor before running the decoder.
    with torch.no_grad():
        direct = tiny_vae.decode(latents / scale).sample.clamp(-1, 1)
    torch.testing.assert_close(out, direct)


def test_encode_and_decode_reject_bad_shapes(tiny_vae):
    with pytest.raises(StableEmoteError, match=r"\(B, 3, H, W\)"):
        V.encode(tiny_vae, torch.zeros(3, 64, 64))
    with pytest.raises(StableEmoteError, match="batch"):
        V.decode(tiny_vae, torch.zeros(4, 8, 8))


def test_latent_channels_to_images_stretches_each_channel():
    latent = torch.stack([torch.arange(16.0).reshape(4, 4) * (c + 1) for c in range(4)])
    images = V.latent_channels_to_images(latent, size_px=32)
    assert len(images) == 4
    for image in images:
        arr = np.asarray(image)
        assert image.size == (32, 32) and arr.shape == (32, 32, 3)
        assert arr.min() == 0 and arr.max() == 255
    flat = V.latent_channels_to_images(torch.ones(2, 4, 4))
    assert np.asarray(flat[0]).max() == 0
    with pytest.raises(StableEmoteError):
        V.latent_channels_to_images(torch.zeros(1, 4, 4, 4))


def test_psnr_and_mse_against_hand_computation():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1
    b[1, :, :2] += 0.5
    torch.testing.assert_close(V.mse(a, b), torch.tensor([0.01, 0.125]))
    expected = 10 * np.log10(4 / np.array([0.01, 0.125]))
    np.testing.assert_allclose(V.psnr(a, b).numpy(), expected, rtol=1e-5)
    assert torch.isinf(V.psnr(a, a)).all()
    with pytest.raises(StableEmoteError):
        V.mse(a, torch.zeros(2, 3, 4, 5))


def test_unet_flops_scale_with_batch_and_pixels_cost_more():
    one = V.unet_flops(TINY_UNET_CONFIG, 4, 8)
    two = V.unet_flops(TINY_UNET_CONFIG, 4, 8, batch_size=2)
    assert one > 0
    assert two == pytest.approx(2 * one, rel=1e-6)
    cost = V.unet_cost_estimate(TINY_UNET_CONFIG, TINY_VAE_CONFIG, 64)
    assert cost["latent_shape"] == (4, 8, 8)
    assert cost["pixel_shape"] == (3, 64, 64)
    assert cost["ratio"] == pytest.approx(cost["pixel_gflops"] / cost["latent_gflops"])
    # 64x more positions: convolutions alone make it more than 40x dearer.
    assert cost["ratio"] > 40


def test_sd15_unet_cost_matches_the_published_order_of_magnitude():
    cost = V.unet_cost_estimate(sd15_config("unet"), sd15_config("vae"), 256)
    assert 150 < cost["latent_gflops"] < 220  # about 180 GFLOPs per image at 256 px
    assert cost["ratio"] > 100


def test_select_examples_by_name_then_fills_up():
    items = [SimpleNamespace(name=n) for n in ("a", "B", "c", "d")]
    chosen = V.select_examples(items, ["b", "missing", "d"], 3)
    assert [e.name for e in chosen] == ["B", "d", "a"]
    assert len(V.select_examples(items, [], 10)) == 4
    with pytest.raises(StableEmoteError):
        V.select_examples([], ["a"], 1)


def _pixels_close(a, b) -> bool:
    a, b = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    if a.size != b.size:
        return False
    return np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() < 2.0


@pytest.mark.slow
def test_cost_figure_is_reproducible(tmp_path):
    path = figures.figure_latent_vs_pixel_cost(tmp_path / "cost.png")
    assert path.stat().st_size > 10_000
    committed = IMAGES_DIR / "vae_latent_vs_pixel_cost.png"
    if committed.exists():
        assert _pixels_close(path, committed)


def test_latent_preview_recovers_a_linear_map_of_the_patch_colours():
    torch.manual_seed(0)
    latents = torch.randn(5, 4, 8, 8)
    true_weights = torch.randn(5, 3) * 0.2
    colours = latents.permute(0, 2, 3, 1) @ true_weights[:-1] + true_weights[-1]  # (N, h, w, 3)
    # Every pixel of a cell's 8x8 patch has the cell's colour: the patch mean is that colour.
    pixels = colours.permute(0, 3, 1, 2).repeat_interleave(8, -1).repeat_interleave(8, -2)
    weights = V.fit_latent_preview(latents, pixels)
    assert weights.shape == (5, 3)
    assert torch.allclose(weights, true_weights, atol=1e-4)
    preview = V.latent_preview(latents, weights)
    assert preview.shape == (5, 3, 8, 8)
    assert torch.allclose(preview, colours.permute(0, 3, 1, 2).clamp(-1, 1), atol=1e-4)


@pytest.mark.parametrize("name", ["fit_latent_preview", "latent_preview"])
def test_notebook_01_writes_the_same_preview_code_as_the_lesson_module(name):
    from lesson_code import module_definition, notebook_definition

    assert notebook_definition("01", name) == module_definition(getattr(V, name))


def test_vae_diagram_shows_the_latent_shape_and_the_factor():
    fig = figures.plot_vae_diagram(sd15_config("vae"), 512)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "(4, 64, 64)" in texts and "(3, 512, 512)" in texts and "0.18215" in texts
