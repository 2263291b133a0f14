"""The noise schedule and the tensors around the denoising loop.

Notebook 03 writes the sampling loop itself; this module holds the small formulas it
reuses (forward noising, signal-to-noise ratio, the predicted clean latent), the
schedule plot and a diagram of the SD 1.5 pipeline with its tensor shapes.

Notation (DDPM): ``alpha_bar_t`` = ``scheduler.alphas_cumprod[t]``, the share of the
signal's variance left at timestep ``t``; ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError

# Batch size of one classifier-free-guidance UNet call: unconditional + conditional.
CFG_BATCH = 2


def _alpha_bar(alphas_cumprod: torch.Tensor, timesteps, like: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t]`` shaped ``(B, 1, 1, 1)`` (or a scalar) to broadcast against ``like``."""
    t = torch.as_tensor(timesteps, dtype=torch.long)
    n = alphas_cumprod.shape[0]
    if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= n:
        raise StableEmoteError(f"Timesteps must lie in [0, {n - 1}], got {t.tolist()}.")
    a = alphas_cumprod.to(torch.float32)[t.cpu()]
    return a.reshape(-1, *([1] * (like.ndim - 1))).to(like.device) if a.ndim else a


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


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio per timestep: ``a_t / (1 - a_t)``, ``(T,)``."""
    a = alphas_cumprod.to(torch.float64)
    return a / (1 - a)


def sd15_scheduler():
    """SD 1.5's noise scheduler (PNDM, scaled_linear betas), built from the published config."""
    from diffusers import PNDMScheduler

    from stableemote_utils.tiny_model import sd15_config

    return PNDMScheduler.from_config(sd15_config("scheduler"))


def plot_noise_schedule(scheduler):
    """A three-panel matplotlib figure: betas, alphas_cumprod, and log10 SNR against t.

    Returns:
        The figure (call ``plt.show()`` in a notebook, or save it).
    """
    import matplotlib.pyplot as plt

    betas = scheduler.betas.double()
    alphas_cumprod = scheduler.alphas_cumprod.double()
    t = torch.arange(len(betas))
    beta_kind = scheduler.config.beta_schedule
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(t, betas, color="#d8703b")
    axes[0].set_title(f"betas ({beta_kind})")
    axes[1].plot(t, alphas_cumprod, label="alphas_cumprod (signal variance)", color="#3b7dd8")
    axes[1].plot(t, 1 - alphas_cumprod, label="1 - alphas_cumprod (noise variance)", color="#888")
    axes[1].set_title("how much signal is left")
    axes[1].legend(fontsize=8, loc="center right")
    axes[2].plot(t, torch.log10(snr(alphas_cumprod)), color="#2a9d5c")
    axes[2].axhline(0, color="#aaa", lw=0.8)
    axes[2].set_title("log10 SNR = log10(a / (1 - a))")
    for ax in axes:
        ax.set_xlabel("training timestep t")
    fig.suptitle(
        f"SD 1.5 training noise schedule: {len(betas)} steps, beta "
        f"{float(betas[0]):.5f} -> {float(betas[-1]):.4f}",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def figure_noise_schedule(path: str | os.PathLike) -> Path:
    """Save SD 1.5's noise-schedule plot (from the published scheduler config) as PNG."""
    import matplotlib.pyplot as plt

    from stableemote_utils.images import save_figure

    fig = plot_noise_schedule(sd15_scheduler())
    out = save_figure(fig, path)
    plt.close(fig)
    return out


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
    from stableemote_utils.vae import latent_shape

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


def figure_sd15_pipeline(path: str | os.PathLike, resolution_px: int = 512) -> Path:
    """A box diagram of SD 1.5 sampling with the tensor shape on every arrow, saved as PNG.

    The shapes come from :func:`pipeline_shapes` over the published SD 1.5 configs.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    from stableemote_utils.images import save_figure
    from stableemote_utils.tiny_model import sd15_config

    shapes = pipeline_shapes(
        sd15_config("unet"), sd15_config("vae"), sd15_config("text_encoder"), resolution_px
    )
    steps = sd15_scheduler().config.num_train_timesteps

    def fmt(key: str) -> str:
        return "(" + ", ".join(str(s) for s in shapes[key]) + ")"

    fig, ax = plt.subplots(figsize=(14, 4.8))
    ax.set_xlim(0, 13.6)
    ax.set_ylim(-0.1, 4.5)
    ax.axis("off")
    boxes = {
        "prompt": (0.2, 3.3, 'prompt and ""\n(text)', "#eeeeee"),
        "tokenizer": (3.0, 3.3, "CLIP tokenizer", "#fde2c8"),
        "text": (5.8, 3.3, "CLIP text encoder", "#fde2c8"),
        "noise": (0.2, 1.5, "seeded Gaussian\nnoise x_T", "#eeeeee"),
        "unet": (5.8, 1.5, "UNet\n(predicts noise)", "#cfe0fa"),
        "cfg": (8.6, 1.5, "guidance\nu + s (c - u)", "#d6f0dd"),
        "sched": (8.6, 0.0, "scheduler.step\nx_t -> x_t-1", "#d6f0dd"),
        "vae": (11.4, 1.5, "VAE decoder", "#f6d0d0"),
        "image": (11.4, 3.3, "image", "#eeeeee"),
    }
    w, h = 1.9, 0.9
    for x, y, label, colour in boxes.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)

    def arrow(a, b, text, start=None, end=None, dx=0.0, dy=0.25):
        xa, ya = start or (boxes[a][0] + w, boxes[a][1] + h / 2)
        xb, yb = end or (boxes[b][0], boxes[b][1] + h / 2)
        ax.annotate("", (xb, yb), (xa, ya), arrowprops={"arrowstyle": "->", "color": "#333"})
        if text:
            ax.text(
                (xa + xb) / 2 + dx,
                (ya + yb) / 2 + dy,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="#1a4d99",
                bbox={"fc": "white", "ec": "none", "pad": 1},
            )

    arrow("prompt", "tokenizer", f"ids {fmt('token_ids')}")
    arrow("tokenizer", "text", "")
    arrow(
        "text",
        "unet",
        f"text embeddings\n{fmt('text_embeddings')}",
        start=(6.75, 3.25),
        end=(6.75, 2.45),
        dx=1.0,
        dy=0.0,
    )
    arrow(
        "noise", "unet", f"latents {fmt('initial_noise')}, doubled:\n{fmt('unet_input')}", dy=0.35
    )
    arrow("unet", "cfg", f"{fmt('noise_pred')}", dy=0.45)
    arrow("cfg", "sched", "", start=(9.55, 1.45), end=(9.55, 0.95))
    arrow(
        "sched",
        "unet",
        f"repeat for each step\n(of {steps} training timesteps)",
        start=(8.55, 0.45),
        end=(6.75, 1.45),
        dx=-0.9,
        dy=-0.25,
    )
    arrow(
        "sched",
        "vae",
        f"final latents\n{fmt('latents')}",
        start=(10.55, 0.45),
        end=(12.35, 1.45),
        dx=0.9,
        dy=-0.25,
    )
    arrow(
        "vae",
        "image",
        f"{fmt('image')}\nin [-1, 1]",
        start=(12.35, 2.45),
        end=(12.35, 3.25),
        dx=-1.0,
        dy=0.0,
    )
    ax.set_title(
        f"Stable Diffusion 1.5 at {resolution_px} px: the tensors between the parts "
        "(batch of 2 = unconditional + conditional)",
        fontsize=10,
    )
    out = save_figure(fig, path)
    plt.close(fig)
    return out
