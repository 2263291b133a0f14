"""SDXL's conditioning, written out: what notebook 07 builds by hand and checks against
``StableDiffusionXLPipeline`` and ``UNet2DConditionModel``.

* :func:`sdxl_prompt_embeds`: the prompt through *two* text encoders; each token is the
  penultimate hidden state of both, side by side, and encoder 2's projected end-of-text
  vector is the pooled embedding.
* :func:`time_ids`: SDXL's micro-conditioning, six numbers per picture: original size,
  crop corner, target size.
* :func:`sinusoidal_embedding`, :func:`added_time_embedding`,
  :func:`timestep_and_added_embedding`: how the UNet turns the time ids and the pooled
  vector into one vector and adds it to the timestep's embedding, the vector every ResNet
  block of the UNet receives.

:mod:`stableemote_utils.model_family` uses :func:`sdxl_prompt_embeds` for training and
sampling, so the function the notebook teaches is the one the course trains with.
"""

from __future__ import annotations

import math

import torch

from stableemote_utils.text import tokenize


def sdxl_prompt_embeds(tokenizers, text_encoders, prompts: list[str]):
    """Prompts -> SDXL's ``(prompt_embeds (N, 77, D1 + D2), pooled (N, P))``.

    Each encoder reads the prompt's token ids; SDXL keeps the *penultimate* hidden state
    (``hidden_states[-2]``: before the last transformer layer and the final LayerNorm),
    ``(N, 77, 768)`` and ``(N, 77, 1280)`` for SDXL, and puts them side by side. The pooled
    vector is encoder 2's ``text_embeds``: its end-of-text token's state after the final
    LayerNorm and the text projection, ``(N, 1280)`` for SDXL.
    """
    states = []
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenize(tokenizer, prompts).to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
    pooled = out.text_embeds  # the last encoder's (encoder 2's) projection
    return torch.cat(states, dim=-1), pooled


def time_ids(original_size_px, crop_top_left_px, target_size_px) -> torch.Tensor:
    """``(1, 6)``: original (height, width), crop (top, left) and target (height, width), in
    pixels, the order of ``StableDiffusionXLPipeline``'s ``add_time_ids``."""
    return torch.tensor(
        [[*original_size_px, *crop_top_left_px, *target_size_px]], dtype=torch.float32
    )


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Values ``(N,)`` -> ``(N, dim)``: cosines then sines of ``value * frequency`` for
    ``dim / 2`` frequencies from 1 down to about 1/10000 (geometric), as SDXL's UNet embeds
    timesteps and time ids (``flip_sin_to_cos=True``, ``freq_shift=0``)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = values.float()[:, None] * frequencies[None, :].to(values.device)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def added_time_embedding(unet, pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pooled text ``(N, P)`` and time ids ``(N, 6)`` -> ``(N, E)``, what SDXL's UNet adds
    to the timestep embedding (``addition_embed_type="text_time"``).

    Each of the six ids is embedded on its own (``addition_time_embed_dim`` features each:
    256 for SDXL), the six are joined after the pooled vector (1280 + 6 x 256 = 2816 for
    SDXL), and ``unet.add_embedding`` (Linear, SiLU, Linear) maps them to the timestep
    embedding's width E (1280 for SDXL).
    """
    n = ids.shape[0]
    ids_features = sinusoidal_embedding(ids.flatten(), unet.config.addition_time_embed_dim)
    joined = torch.cat(
        [pooled, ids_features.reshape(n, -1).to(pooled.device, pooled.dtype)], dim=-1
    )
    return unet.add_embedding(joined)


def timestep_and_added_embedding(
    unet, timestep: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """``(N, E)``: the timestep's embedding (``(N,)`` timesteps, embedded sinusoidally over
    ``block_out_channels[0]`` features, then ``unet.time_embedding``) plus
    :func:`added_time_embedding`: the vector the UNet hands every ResNet block."""
    features = sinusoidal_embedding(timestep, unet.config.block_out_channels[0])
    return unet.time_embedding(features.to(pooled.dtype)) + added_time_embedding(unet, pooled, ids)
