"""The VAE: pixels <-> latents, the scaling factor, reconstruction quality, and why it pays.

Lesson module of notebook ``01_vae_latents``.

Stable Diffusion 1.5 never denoises pixels. Its VAE (``diffusers.AutoencoderKL``) turns
an image ``(B, 3, H, W)`` in [-1, 1] into a latent ``(B, 4, H/8, W/8)``; the UNet works
there, and the decoder turns the result back into pixels. Notebook 01 walks through it.
"""

from __future__ import annotations

import torch
from PIL import Image

from stableemote_utils.errors import StableEmoteError

# Peak-to-peak range of pixels in [-1, 1], the range the VAE works in.
PIXEL_RANGE = 2.0
# The text length and width SD 1.5's UNet cross-attends to (for cost estimates).
TEXT_TOKENS = 77


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise StableEmoteError(
            f"Expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}. Turn images into "
            "tensors with stableemote_utils.data.images_to_tensor (values in [-1, 1])."
        )


def downsample_factor(vae_config: dict) -> int:
    """How many pixels of one side map onto one latent cell: ``2 ** (len(blocks) - 1)``.

    Each encoder block but the last halves height and width; SD 1.5 has four blocks, so 8.
    """
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def latent_shape(vae_config: dict, resolution_px: int) -> tuple[int, int, int]:
    """The latent shape ``(C, h, w)`` for a square image of ``resolution_px`` (e.g. (4, 64, 64) at 512).

    Raises:
        StableEmoteError: if the resolution is not a multiple of the downsample factor.
    """
    factor = downsample_factor(vae_config)
    if resolution_px <= 0 or resolution_px % factor:
        raise StableEmoteError(
            f"A resolution of {resolution_px} px does not divide into latents: it must be a "
            f"positive multiple of {factor} (the VAE's downsample factor)."
        )
    side = resolution_px // factor
    return (int(vae_config["latent_channels"]), side, side)


def compression_factor(vae_config: dict, resolution_px: int) -> float:
    """Numbers in an RGB image over numbers in its latent: ``H*W*3 / (h*w*C)`` (48 for SD 1.5)."""
    channels, h, w = latent_shape(vae_config, resolution_px)
    pixel_values = resolution_px * resolution_px * int(vae_config["in_channels"])
    return pixel_values / (channels * h * w)


def encode_to_latent_dist(vae: torch.nn.Module, pixels: torch.Tensor):
    """Run the encoder: pixels ``(B, 3, H, W)`` in [-1, 1] -> a diagonal Gaussian over latents.

    Returns:
        diffusers' ``DiagonalGaussianDistribution``; ``.mean`` and ``.std`` are
        ``(B, 4, H/8, W/8)``, ``.sample(generator)`` draws one latent (not yet scaled).
    """
    _check_pixels(pixels)
    param = next(vae.parameters())
    with torch.no_grad():
        return vae.encode(pixels.to(param.device, param.dtype)).latent_dist


def encode(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    generator: torch.Generator | None = None,
    sample: bool = True,
) -> torch.Tensor:
    """Pixels ``(B, 3, H, W)`` in [-1, 1] -> scaled latents ``(B, 4, H/8, W/8)``.

    Draws from the encoder's distribution (or takes its mean if ``sample`` is False) and
    multiplies by ``vae.config.scaling_factor`` (0.18215 for SD 1.5), the number that
    brings the latents of a trained VAE to roughly unit variance, which is what the
    noise schedule assumes.
    """
    dist = encode_to_latent_dist(vae, pixels)
    latents = dist.sample(generator=generator) if sample else dist.mean
    return latents * vae.config.scaling_factor


def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``(B, 4, h, w)`` -> pixels ``(B, 3, 8h, 8w)``, clamped to [-1, 1], float32."""
    if latents.ndim != 4:
        raise StableEmoteError(
            f"Expected latents of shape (B, C, h, w), got {tuple(latents.shape)}; add a batch "
            "dimension with latents[None] for a single latent."
        )
    param = next(vae.parameters())
    with torch.no_grad():
        pixels = vae.decode(latents.to(param.device, param.dtype) / vae.config.scaling_factor)
    return pixels.sample.float().clamp(-1, 1)


def latent_channels_to_images(
    latent: torch.Tensor, size_px: int | None = None
) -> list[Image.Image]:
    """One latent ``(C, h, w)`` -> C grayscale images, each stretched to its own min..max.

    Args:
        latent: a single latent (take ``latents[0]`` from a batch).
        size_px: resize each picture to this side (nearest neighbour, so cells stay crisp).
    """
    if latent.ndim != 3:
        raise StableEmoteError(
            f"Expected one latent of shape (C, h, w), got {tuple(latent.shape)}; pass latents[i]."
        )
    out = []
    for channel in latent.detach().float().cpu():
        lo, hi = channel.min(), channel.max()
        scaled = (channel - lo) / (hi - lo) if hi > lo else torch.zeros_like(channel)
        image = Image.fromarray((scaled * 255).round().to(torch.uint8).numpy(), mode="L")
        if size_px:
            image = image.resize((size_px, size_px), Image.Resampling.NEAREST)
        out.append(image.convert("RGB"))
    return out


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: ``(B, ...)`` and ``(B, ...)`` -> ``(B,)``."""
    if a.shape != b.shape:
        raise StableEmoteError(
            f"Cannot compare tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}."
        )
    diff = a.detach().float().cpu() - b.detach().float().cpu()
    return diff.pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = PIXEL_RANGE) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(range^2 / MSE)``, ``(B,)``.

    Higher is better; identical images give ``inf``. ``data_range`` is 2 for pixels in [-1, 1].
    """
    return 10 * torch.log10(data_range**2 / mse(a, b))


def unet_flops(unet_config: dict, in_channels: int, side: int, batch_size: int = 1) -> int:
    """FLOPs of one forward pass of a UNet with this config on ``(B, in_channels, side, side)``.

    The UNet is built on PyTorch's ``meta`` device (no memory, no weights) and its
    forward pass is counted with ``torch.utils.flop_counter``; the text input is
    ``(B, 77, cross_attention_dim)``. Counts multiply-adds as two FLOPs.
    """
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = dict(unet_config, in_channels=in_channels, out_channels=in_channels, sample_size=side)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        sample = torch.zeros(batch_size, in_channels, side, side)
        text = torch.zeros(batch_size, TEXT_TOKENS, config["cross_attention_dim"])
        timestep = torch.zeros(batch_size, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(sample, timestep, encoder_hidden_states=text)
    return int(counter.get_total_flops())


def unet_cost_estimate(unet_config: dict, vae_config: dict, resolution_px: int) -> dict:
    """The cost of one UNet forward in latent space vs the same UNet on raw pixels.

    Returns:
        ``{"latent_shape", "pixel_shape", "latent_gflops", "pixel_gflops", "ratio"}`` for
        one image; the shapes are ``(C, H, W)``, GFLOPs are 1e9 FLOPs.
    """
    channels, h, _ = latent_shape(vae_config, resolution_px)
    pixel_channels = int(vae_config["in_channels"])
    latent = unet_flops(unet_config, channels, h) / 1e9
    pixel = unet_flops(unet_config, pixel_channels, resolution_px) / 1e9
    return {
        "latent_shape": (channels, h, h),
        "pixel_shape": (pixel_channels, resolution_px, resolution_px),
        "latent_gflops": latent,
        "pixel_gflops": pixel,
        "ratio": pixel / latent,
    }


def select_examples(examples: list, names: list[str], count: int) -> list:
    """Pick examples by name (case-insensitive), in the order asked, topped up to ``count``.

    Names missing from the data set are skipped and the first other examples fill the
    gap, so a notebook works on any emoji set. Items need a ``.name`` attribute.
    """
    if count <= 0 or not examples:
        raise StableEmoteError(f"Cannot pick {count} examples from a set of {len(examples)}.")
    by_name = {e.name.lower(): e for e in examples}
    chosen = [by_name[n.lower()] for n in names if n.lower() in by_name][:count]
    for example in examples:
        if len(chosen) >= count:
            break
        if example not in chosen:
            chosen.append(example)
    return chosen


def fit_latent_preview(latents: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Least-squares linear map from latent cells to the mean colour of their pixel patches.

    Each latent cell ``(C,)`` plus a constant 1 is mapped to the mean RGB of the
    ``factor x factor`` patch of pixels it stands for: a decoder-free preview.

    Args:
        latents: ``(N, C, h, w)`` scaled latents.
        pixels: ``(N, 3, H, W)`` in [-1, 1], ``H = factor * h``.

    Returns:
        weights ``(C + 1, 3)``: one row per channel, then the constant term.
    """
    factor = pixels.shape[-1] // latents.shape[-1]
    patch_colours = torch.nn.functional.avg_pool2d(pixels.float(), factor)  # (N, 3, h, w)
    cells = latents.float().permute(0, 2, 3, 1).flatten(0, 2)  # (N * h * w, C)
    cells = torch.cat([cells, cells.new_ones(len(cells), 1)], dim=1)  # (N * h * w, C + 1)
    colours = patch_colours.permute(0, 2, 3, 1).flatten(0, 2)  # (N * h * w, 3)
    return torch.linalg.lstsq(cells, colours).solution


def latent_preview(latents: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Apply :func:`fit_latent_preview`'s weights: ``(N, C, h, w)`` -> ``(N, 3, h, w)``."""
    cells = latents.float().permute(0, 2, 3, 1)  # (N, h, w, C)
    colours = cells @ weights[:-1] + weights[-1]  # (N, h, w, 3)
    return colours.permute(0, 3, 1, 2).clamp(-1, 1)
