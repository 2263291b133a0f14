"""The noise schedule, the sampling loop and the DDIM update, as notebook 03 writes them.

Lesson module of notebook ``03_unet_denoising_loop``.

Notebook 03 writes the sampling loop itself; this module holds the same text of its two
central pieces, :func:`denoise` (the loop with classifier-free guidance) and
:func:`ddim_step` (the scheduler's update written by hand), which ``tests/test_denoising.py``
checks against the notebook, plus the small formulas it reuses (forward noising,
signal-to-noise ratio, the predicted clean latent) and the tensor shapes of the SD 1.5
pipeline. The schedule plot and the pipeline diagram are in :mod:`stableemote_utils.figures`.

Notation (DDPM): ``alpha_bar_t`` = ``scheduler.alphas_cumprod[t]``, the share of the
signal's variance left at timestep ``t``; ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.
"""

from __future__ import annotations

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tiny_model import sd15_config
from stableemote_utils.vae import latent_shape

# Batch size of one classifier-free-guidance UNet call: unconditional + conditional.
CFG_BATCH = 2


def _alpha_bar(alphas_cumprod: torch.Tensor, timesteps, like: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t]`` shaped ``(B, 1, 1, 1)`` (or a scalar) to broadcast against ``like``."""
    t = torch.as_tensor(timesteps, dtype=torch.long)
    n = alphas_cumprod.shape[0]
    # Checked on the host only: on a GPU the check would wait for the GPU on every call.
    if t.device.type == "cpu" and (t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= n):
        raise StableEmoteError(f"Timesteps must lie in [0, {n - 1}], got {t.tolist()}.")
    a = alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.device) if a.ndim else a.to(like.device)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps
) -> torch.Tensor:
    """Forward noising: ``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` with ``a_t = alphas_cumprod[t]``.

    Args:
        x0: clean latents (or pixels) ``(B, C, H, W)``.
        noise: standard normal noise, same shape.
        alphas_cumprod: ``(T,)``, from ``scheduler.alphas_cumprod``.
        timesteps: an int or ``(B,)`` ints in ``[0, T)``.

    Returns:
        ``x_t``, same shape and dtype as ``x0``.
    """
    if x0.shape != noise.shape:
        raise StableEmoteError(
            f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape."
        )
    a = _alpha_bar(alphas_cumprod, timesteps, x0)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def predicted_x0(
    x_t: torch.Tensor, noise_pred: torch.Tensor, alphas_cumprod: torch.Tensor, timestep
) -> torch.Tensor:
    """Undo the forward formula with the predicted noise: ``(x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``.

    Shapes as :func:`add_noise`; the result is the model's current guess of the clean latent.
    """
    if x_t.shape != noise_pred.shape:
        raise StableEmoteError(
            f"x_t {tuple(x_t.shape)} and noise_pred {tuple(noise_pred.shape)} must match."
        )
    a = _alpha_bar(alphas_cumprod, timestep, x_t)
    return ((x_t.float() - (1 - a).sqrt() * noise_pred.float()) / a.sqrt()).to(x_t.dtype)


def ddim_step(
    noise_pred: torch.Tensor,
    t,
    latents: torch.Tensor,
    scheduler,
    eta: float = 0.0,
    fresh_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update: ``x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s^2) eps_hat + s z``.

    ``noise_pred``, ``latents`` and ``fresh_noise`` (``z``, used when ``eta > 0``) are
    ``(B, 4, h, w)``; ``scheduler`` is a ``DDIMScheduler`` after ``set_timesteps``. With
    ``eta = 0`` the step is deterministic (``s = 0``); ``eta = 1`` replaces as much of the
    noise with fresh noise as a DDPM step does. Returns ``x_prev``, same shape and dtype.
    """
    t = int(t)
    t_prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_bar = scheduler.alphas_cumprod[t]
    # Below t = 0 there is no timestep left: DDIM uses alphas_cumprod[0] (set_alpha_to_one=False).
    alpha_bar_prev = (
        scheduler.alphas_cumprod[t_prev] if t_prev >= 0 else scheduler.final_alpha_cumprod
    )
    x0_hat = (latents - (1 - alpha_bar).sqrt() * noise_pred) / alpha_bar.sqrt()
    # s: the standard deviation of the fresh noise; the reused noise shrinks to keep the total.
    s = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev - s**2).sqrt() * noise_pred
    if eta > 0:
        x_prev = x_prev + s * fresh_noise
    return x_prev


def denoise(
    unet,
    scheduler,
    text_embeddings,
    noise,
    guidance_scale,
    num_inference_steps,
    step=None,
    record_at=(),
):
    """The sampling loop with classifier-free guidance; returns the final latents and records.

    text_embeddings: (2, 77, D), unconditional first. noise: the starting latents (1, 4, h, w).
    step: the update as step(noise_pred, t, latents, scheduler); None means scheduler.step.
    Records, at the loop indices in record_at: (t, the latents as the scheduler holds them,
    guided noise, predicted x_0 in fp32). The latents are x_t for DDIM and PNDM and
    x_t / sqrt(alpha_bar_t) for Euler; x_0 is predicted from x_t in both cases.
    """
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    records = []
    for i, t in enumerate(scheduler.timesteps):
        latent_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        with torch.no_grad():
            noise_pred = unet(latent_input, t, encoder_hidden_states=text_embeddings).sample
        noise_uncond, noise_text = noise_pred.chunk(2)
        noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
        if i in record_at:
            # x_t in the forward formula's units: the UNet's own input (scale_model_input undoes
            # Euler's scaling and leaves DDIM's and PNDM's latents as they are), in fp32:
            # dividing by sqrt(alpha_bar), small at high noise, magnifies rounding
            x_t = latent_input.chunk(2)[0].float()
            x0_guess = predicted_x0(x_t, noise_pred.float(), scheduler.alphas_cumprod, int(t))
            records.append((int(t), latents.clone(), noise_pred, x0_guess))
        if step is None:
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        else:
            latents = step(noise_pred, t, latents, scheduler)
    return latents, records


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio per timestep: ``a_t / (1 - a_t)``, ``(T,)``."""
    a = alphas_cumprod.to(torch.float64)
    return a / (1 - a)


def sd15_scheduler():
    """SD 1.5's noise scheduler (PNDM, scaled_linear betas), built from the published config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(sd15_config("scheduler"))


def pipeline_shapes(
    unet_config: dict,
    vae_config: dict,
    text_config: dict,
    resolution_px: int,
    max_tokens: int = 77,
) -> dict[str, tuple[int, ...]]:
    """The tensor shape at each stage of SD text-to-image sampling with guidance, one image.

    Computed from the component configs, so the same function describes SD 1.5 and the
    tiny preset. Keys, in order: ``token_ids``, ``text_embeddings``, ``initial_noise``,
    ``unet_input``, ``noise_pred``, ``latents``, ``image``.
    """

    channels, h, w = latent_shape(vae_config, resolution_px)
    if unet_config["in_channels"] != channels or unet_config["out_channels"] != channels:
        raise StableEmoteError(
            f"The UNet takes {unet_config['in_channels']} channels but the VAE makes {channels}: "
            "these configs are not from the same model."
        )
    hidden = int(text_config["hidden_size"])
    if unet_config["cross_attention_dim"] != hidden:
        raise StableEmoteError(
            f"The UNet cross-attends to width {unet_config['cross_attention_dim']} but the text "
            f"encoder outputs {hidden}: these configs are not from the same model."
        )
    return {
        "token_ids": (CFG_BATCH, max_tokens),
        "text_embeddings": (CFG_BATCH, max_tokens, hidden),
        "initial_noise": (1, channels, h, w),
        "unet_input": (CFG_BATCH, channels, h, w),
        "noise_pred": (CFG_BATCH, channels, h, w),
        "latents": (1, channels, h, w),
        "image": (1, int(vae_config["out_channels"]), resolution_px, resolution_px),
    }
