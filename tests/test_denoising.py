"""Tests for stableemote_utils.denoising: the noising formula, SNR, x0 prediction, shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils import denoising as D
from stableemote_utils import figures
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import IMAGES_DIR
from stableemote_utils.tiny_model import (
    TINY_TEXT_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    sd15_config,
)


@pytest.fixture(scope="module")
def scheduler():
    return D.sd15_scheduler()


def test_add_noise_matches_diffusers(scheduler):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    ours = D.add_noise(x0, noise, scheduler.alphas_cumprod, t)
    theirs = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # One int timestep for the whole batch.
    single = D.add_noise(x0, noise, scheduler.alphas_cumprod, 500)
    torch.testing.assert_close(single[1], ours[1])
    # Almost all signal at t=0, almost all noise at t=999.
    assert (ours[0] - x0[0]).abs().mean() < 0.05
    assert (ours[2] - noise[2]).abs().mean() < 0.1


def test_predicted_x0_inverts_add_noise(scheduler):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    for t in (10, 400, 900):
        x_t = D.add_noise(x0, noise, scheduler.alphas_cumprod, t)
        torch.testing.assert_close(
            D.predicted_x0(x_t, noise, scheduler.alphas_cumprod, t), x0, rtol=1e-3, atol=1e-3
        )


def test_bad_inputs_raise(scheduler):
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(StableEmoteError, match="Timesteps"):
        D.add_noise(x, x, scheduler.alphas_cumprod, 1000)
    with pytest.raises(StableEmoteError, match="same shape"):
        D.add_noise(x, torch.zeros(1, 4, 8, 9), scheduler.alphas_cumprod, 0)
    with pytest.raises(StableEmoteError, match="must match"):
        D.predicted_x0(x, torch.zeros(2, 4, 8, 8), scheduler.alphas_cumprod, 0)


def test_snr_falls_monotonically(scheduler):
    s = D.snr(scheduler.alphas_cumprod)
    assert s.shape == (scheduler.config.num_train_timesteps,)
    assert (s[1:] < s[:-1]).all()
    a0 = float(scheduler.alphas_cumprod[0])
    assert float(s[0]) == pytest.approx(a0 / (1 - a0))
    assert float(s[-1]) < 0.01 < 100 < float(s[0])


def test_pipeline_shapes_sd15_and_tiny():
    shapes = D.pipeline_shapes(
        sd15_config("unet"), sd15_config("vae"), sd15_config("text_encoder"), 512
    )
    assert shapes["token_ids"] == (2, 77)
    assert shapes["text_embeddings"] == (2, 77, 768)
    assert shapes["unet_input"] == (2, 4, 64, 64)
    assert shapes["latents"] == (1, 4, 64, 64)
    assert shapes["image"] == (1, 3, 512, 512)
    tiny = D.pipeline_shapes(TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG, 64)
    assert tiny["text_embeddings"] == (2, 77, TINY_TEXT_CONFIG["hidden_size"])
    assert tiny["latents"] == (1, 4, 8, 8)
    with pytest.raises(StableEmoteError, match="cross-attends"):
        D.pipeline_shapes(sd15_config("unet"), sd15_config("vae"), TINY_TEXT_CONFIG, 512)


def test_plot_noise_schedule_has_three_panels(scheduler):
    import matplotlib.pyplot as plt

    fig = figures.plot_noise_schedule(scheduler)
    assert len(fig.axes) == 3
    line = fig.axes[1].lines[0]
    np.testing.assert_allclose(line.get_ydata(), scheduler.alphas_cumprod.double().numpy())
    plt.close(fig)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (figures.figure_noise_schedule, "noise_schedule.png"),
        (figures.figure_sd15_pipeline, "sd15_pipeline_shapes.png"),
    ],
)
def test_figures_are_reproducible(tmp_path, make, name):
    path = make(tmp_path / name)
    assert path.stat().st_size > 10_000
    committed = IMAGES_DIR / name
    if committed.exists():
        a = np.asarray(Image.open(path).convert("RGB"), float)
        b = np.asarray(Image.open(committed).convert("RGB"), float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0


# --- the loop and the DDIM update notebook 03 writes ------------------------------------


@pytest.mark.parametrize("name", ["denoise", "ddim_step"])
def test_notebook_03_writes_the_same_code_as_the_lesson_module(name):
    from lesson_code import module_definition, notebook_definition

    assert notebook_definition("03", name) == module_definition(getattr(D, name))


@pytest.mark.parametrize("steps", [1, 7, 25])
def test_ddim_step_matches_diffusers_at_every_timestep(steps):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(sd15_config("scheduler"))
    ddim.set_timesteps(steps)
    g = torch.Generator().manual_seed(steps)
    for t in ddim.timesteps:  # the last one has no previous timestep: alpha_bar_0 is used
        x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        ours = D.ddim_step(eps, t, x, ddim)
        torch.testing.assert_close(ours, ddim.step(eps, t, x).prev_sample, rtol=1e-6, atol=1e-5)
        assert not torch.allclose(ours, x)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_with_fresh_noise_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(sd15_config("scheduler"))
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    for t in ddim.timesteps:
        x, eps, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        ours = D.ddim_step(eps, t, x, ddim, eta=eta, fresh_noise=z)
        theirs = ddim.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        # fresh noise matters wherever there is a previous timestep to noise towards
        if int(t) - ddim.config.num_train_timesteps // 10 >= 0:
            assert not torch.allclose(ours, D.ddim_step(eps, t, x, ddim))


def _loop_inputs(components, scheduler_class):
    """The tiny UNet, a fresh ``scheduler_class`` from its config, and seeded starting noise
    ``(1, 4, h, w)`` and text embeddings ``(2, 77, D)`` for :func:`denoise`."""
    unet, c = components.unet, components.unet.config
    scheduler = scheduler_class.from_config(components.scheduler.config)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, c.in_channels, c.sample_size, c.sample_size, generator=g)
    text = torch.randn(2, 77, c.cross_attention_dim, generator=g)
    return unet, scheduler, noise, text


def test_denoise_with_the_hand_written_update_follows_ddim(tiny_components):
    from diffusers import DDIMScheduler

    unet, ddim, noise, text = _loop_inputs(tiny_components, DDIMScheduler)
    theirs, records = D.denoise(unet, ddim, text, noise, 3.0, 4, record_at=(0, 3))
    ours, _ = D.denoise(unet, ddim, text, noise, 3.0, 4, step=D.ddim_step)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert [t for t, *_ in records] == [ddim.timesteps[0].item(), ddim.timesteps[3].item()]
    assert not torch.allclose(theirs, noise)


def test_denoise_predicts_x0_from_x_t_under_euler_too(tiny_components):
    """Euler holds its latents divided by sqrt(alpha_bar_t); the recorded x_0 guess must
    come from x_t all the same, as under DDIM (the same formula on rescaled latents)."""
    from diffusers import EulerDiscreteScheduler

    unet, euler, noise, text = _loop_inputs(tiny_components, EulerDiscreteScheduler)
    _, records = D.denoise(unet, euler, text, noise, 3.0, 3, record_at=(0, 2))
    for t, latents, eps, guess in records:
        x_t = latents * euler.alphas_cumprod[t].sqrt()
        expected = D.predicted_x0(x_t, eps, euler.alphas_cumprod, t)
        torch.testing.assert_close(guess, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(guess, D.predicted_x0(latents, eps, euler.alphas_cumprod, t))
