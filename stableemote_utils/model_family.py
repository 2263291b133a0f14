"""Model families: what changes between SD 1.5 and SDXL, each in one object.

One training loop, one encode-once cache, one sampler and one exporter serve both
families; what differs is asked of the family of the loaded model (:func:`family_of`):

* **Prompts** (:meth:`ModelFamily.encode_prompts`). SD 1.5 reads its one text encoder's
  last layer after the final LayerNorm, ``(N, 77, 768)``. SDXL reads the *penultimate*
  hidden states of both its encoders, concatenated to ``(N, 77, 768 + 1280)``, and
  encoder 2's pooled projection ``(N, 1280)``.
* **Pictures' own conditioning** (:meth:`ModelFamily.image_conditioning`). SDXL is told
  each training picture's original size, crop corner and target size (six numbers, its
  "micro-conditioning"); SD 1.5 is told nothing.
* **The UNet's inputs** (:meth:`ModelFamily.unet_inputs`). SDXL's UNet takes the pooled
  embedding and the six time ids as ``added_cond_kwargs``; they are embedded and added to
  the timestep's embedding.
* **Sampling** (:meth:`ModelFamily.sampling_embeds`). With no negative prompt, SDXL's
  unconditional embeddings are zeros (``force_zeros_for_empty_prompt``); SD 1.5 encodes
  the empty prompt.

A family's tensors are named as the cache stores them: ``text`` and (SDXL) ``pooled`` per
prompt, ``time_ids`` per picture.
"""

from __future__ import annotations

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import is_sdxl_unet
from stableemote_utils.sdxl_conditioning import sdxl_prompt_embeds, time_ids
from stableemote_utils.text import encode_prompts

# Pictures are padded to a square, never cropped: every crop corner is the top left.
CROP_TOP_LEFT = (0, 0)
# SDXL's sizes come in these steps: the VAE's 8 times 2 for each of the UNet's 2 halvings.
SDXL_SIZE_STEP_PX = 32


class ModelFamily:
    """SD 1.5: one text encoder, its last hidden states, no extra UNet inputs.

    Attributes:
        name: ``"sd15"`` or ``"sdxl"``.
        label: how messages and ``lora inspect`` name it.
        prompt_keys: the tensors :meth:`encode_prompts` returns, per prompt.
        image_keys: the tensors :meth:`image_conditioning` returns, per picture.
    """

    name = "sd15"
    label = "SD 1.x"
    prompt_keys: tuple[str, ...] = ("text",)
    image_keys: tuple[str, ...] = ()

    def text_encoders(self, components) -> list[torch.nn.Module]:
        """The text encoders the family reads (to park, move or fingerprint)."""
        return [components.text_encoder]

    def encode_prompts(self, components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> ``{"text": (N, 77, D)}``: the encoder's last hidden states after its
        final LayerNorm (D = 768 for SD 1.5), on the encoder's device."""
        return {"text": encode_prompts(components.tokenizer, components.text_encoder, prompts)}

    def image_conditioning(self, examples, resolution_px: int) -> dict[str, torch.Tensor]:
        """Per-picture conditioning: none for SD 1.5."""
        return {}

    def unet_inputs(self, cond: dict[str, torch.Tensor]) -> dict:
        """The UNet's inputs besides the noisy latents and timesteps, for a batch of ``cond``
        (``text`` ``(B, 77, D)``): ``{"encoder_hidden_states": text}``."""
        return {"encoder_hidden_states": cond["text"]}

    def sampling_embeds(
        self, prompt: dict[str, torch.Tensor], empty: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Pipeline keywords for an encoded prompt (each tensor ``(1, ...)``); ``empty`` is
        the encoded empty prompt, the unconditional side of classifier-free guidance."""
        return {"prompt_embeds": prompt["text"], "negative_prompt_embeds": empty["text"]}

    def dropped_caption(self, empty: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a caption dropped in training (``--caption-dropout``) is replaced by, given
        the encoded empty prompt ``empty`` (each tensor ``(1, ...)``): for SD 1.5, the
        encoded ``""`` itself, the unconditional side its sampler guides against."""
        return empty

    def check_resolution(self, resolution_px: int) -> None:
        """Refuse a size this family's UNet cannot take (SD 1.5 takes any multiple of 8)."""


class SDXLFamily(ModelFamily):
    """SDXL: two text encoders, penultimate layers, pooled embedding and time ids."""

    name = "sdxl"
    label = "SDXL"
    prompt_keys = ("text", "pooled")
    image_keys = ("time_ids",)

    def text_encoders(self, components) -> list[torch.nn.Module]:
        return [components.text_encoder, components.text_encoder_2]

    def encode_prompts(self, components, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> ``{"text": (N, 77, D1 + D2), "pooled": (N, P)}``.

        ``text`` is the penultimate hidden state (``hidden_states[-2]``, before the last
        layer and the final LayerNorm) of each encoder, concatenated (768 + 1280 = 2048 for
        SDXL); ``pooled`` is encoder 2's projected end-of-text vector (1280), as
        ``StableDiffusionXLPipeline.encode_prompt`` computes them
        (:func:`~stableemote_utils.sdxl_conditioning.sdxl_prompt_embeds`, notebook 07).
        """
        tokenizers = (components.tokenizer, components.tokenizer_2)
        encoders = (components.text_encoder, components.text_encoder_2)
        with torch.no_grad():
            text, pooled = sdxl_prompt_embeds(tokenizers, encoders, prompts)
        return {"text": text, "pooled": pooled}

    def image_conditioning(self, examples, resolution_px: int) -> dict[str, torch.Tensor]:
        """``{"time_ids": (N, 6)}``: each picture's original size (height, width), crop
        corner (top, left) and target size, what SDXL's UNet is told about it.

        The original size is the square the picture was resized from (its own size after
        padding to a square; pictures without a record count as drawn at the target size).
        Pictures are padded, never cropped, and never flipped (an emoji's direction is part
        of what it means), so the crop corner is (0, 0) for every picture.
        """
        target = (resolution_px, resolution_px)
        rows = [
            time_ids(getattr(e, "original_size", None) or target, CROP_TOP_LEFT, target)
            for e in examples
        ]
        return {"time_ids": torch.cat(rows) if rows else torch.zeros(0, 6)}

    def unet_inputs(self, cond: dict[str, torch.Tensor]) -> dict:
        """``encoder_hidden_states`` ``(B, 77, 2048)`` and ``added_cond_kwargs``:
        ``text_embeds`` ``(B, 1280)`` and ``time_ids`` ``(B, 6)``."""
        dtype = cond["text"].dtype
        return {
            "encoder_hidden_states": cond["text"],
            "added_cond_kwargs": {
                "text_embeds": cond["pooled"],
                "time_ids": cond["time_ids"].to(dtype),
            },
        }

    def sampling_embeds(
        self, prompt: dict[str, torch.Tensor], empty: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The prompt's ``text`` and ``pooled``; the negative side is zeros, as SDXL's
        pipeline makes it for no negative prompt (``force_zeros_for_empty_prompt``)."""
        return {
            "prompt_embeds": prompt["text"],
            "pooled_prompt_embeds": prompt["pooled"],
            "negative_prompt_embeds": torch.zeros_like(prompt["text"]),
            "negative_pooled_prompt_embeds": torch.zeros_like(prompt["pooled"]),
        }

    def dropped_caption(self, empty: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Zeros of the encoded empty prompt's shapes (``text`` ``(1, 77, 2048)``, ``pooled``
        ``(1, 1280)``): SDXL's pipeline guides against zeros when there is no negative
        prompt (``force_zeros_for_empty_prompt``), so a dropped caption trains that."""
        return {k: torch.zeros_like(v) for k, v in empty.items()}

    def check_resolution(self, resolution_px: int) -> None:
        """Refuse a size that is not a multiple of :data:`SDXL_SIZE_STEP_PX`.

        SDXL's latent (1/8 of the picture) is halved twice on the way down and doubled
        twice on the way up; the original SDXL code that the web UIs run needs each
        halving to be exact (diffusers pads instead), so a LoRA trained at another size
        would be trained on something those tools never draw.
        """
        if resolution_px % SDXL_SIZE_STEP_PX:
            lower = max(SDXL_SIZE_STEP_PX, resolution_px // SDXL_SIZE_STEP_PX * SDXL_SIZE_STEP_PX)
            raise StableEmoteError(
                f"--resolution {resolution_px}: SDXL's UNet halves the latent (1/8 of the "
                f"picture) twice, so the picture must be a multiple of {SDXL_SIZE_STEP_PX} px; "
                f"use {lower} or {lower + SDXL_SIZE_STEP_PX} (1024 is what SDXL was trained at)."
            )


SD15 = ModelFamily()
SDXL = SDXLFamily()
FAMILIES = {f.name: f for f in (SD15, SDXL)}


def family_of(unet_or_config) -> ModelFamily:
    """The family of a UNet (or its config): SDXL when it takes ``text_time`` added
    conditioning, else SD 1.5."""
    config = getattr(unet_or_config, "config", unet_or_config)
    return SDXL if is_sdxl_unet(config) else SD15


def get_family(name: str) -> ModelFamily:
    """A family by name (``"sd15"`` or ``"sdxl"``)."""
    if name not in FAMILIES:
        raise StableEmoteError(f"Unknown model family {name!r}; use 'sd15' or 'sdxl'.")
    return FAMILIES[name]
