"""Encode once: every training image through the VAE and every caption through CLIP.

The original recipe ran the VAE encoder and the text encoder on every step, a third
or more of the step's work, for inputs that never change. Here they run once; the
result is stored as safetensors under a fingerprint of everything that affects it
(model, data, resolution, caption template), so a stale cache is never used.

What a caption becomes is the model family's business
(:meth:`~stableemote_utils.model_family.ModelFamily.encode_prompts`): SD 1.5 caches one
encoder's states, SDXL both encoders' states, the pooled embedding and each picture's
time ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from stableemote_utils import vae
from stableemote_utils.data import EmojiExample, images_to_tensor
from stableemote_utils.files import explain_write_errors, save_state_dict_atomic
from stableemote_utils.loading import SDComponents
from stableemote_utils.model_family import family_of

CACHE_FORMAT_VERSION = "1"


def encode_captions(components: SDComponents, captions: list[str], batch: int = 64) -> torch.Tensor:
    """Captions -> the text states the UNet cross-attends to, ``(N, 77, D)`` in fp32 on CPU.

    D = 768 for SD 1.5 (its encoder's last hidden states), 2048 for SDXL (both encoders'
    penultimate states); :func:`encode_prompt_tensors` gives SDXL's pooled vectors too.
    """
    return encode_prompt_tensors(components, captions, batch)["text"]


def encode_prompt_tensors(
    components: SDComponents, captions: list[str], batch: int = 64
) -> dict[str, torch.Tensor]:
    """Captions -> the family's prompt tensors in fp32 on CPU, in batches of ``batch``.

    SD 1.5: ``{"text": (N, 77, 768)}``; SDXL: ``{"text": (N, 77, 2048), "pooled": (N, 1280)}``
    (see :meth:`~stableemote_utils.model_family.ModelFamily.encode_prompts`).
    """
    family = family_of(components.unet)
    chunks = [
        family.encode_prompts(components, captions[i : i + batch])
        for i in range(0, len(captions), batch)
    ]
    return {k: torch.cat([c[k].float().cpu() for c in chunks]) for k in family.prompt_keys}


def encode_images(
    components: SDComponents, examples: list[EmojiExample], batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images -> the VAE's latent distribution, scaled: mean and std, each ``(N, 4, H/8, W/8)``.

    Both are multiplied by the VAE's ``scaling_factor`` (0.18215 for SD 1.5), so a
    training latent is ``mean + std * noise`` with no further scaling.
    """
    scale = components.vae.config.scaling_factor
    means, stds = [], []
    for i in range(0, len(examples), batch):
        pixels = images_to_tensor([e.image for e in examples[i : i + batch]])
        dist = vae.encode_to_latent_dist(components.vae, pixels)
        means.append((dist.mean * scale).float().cpu())
        stds.append((dist.std * scale).float().cpu())
    return torch.cat(means), torch.cat(stds)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's config and a sample of its weights (cheap, not cryptographic).

    The same for the same model wherever its files are: the config's ``_name_or_path`` and
    library-version keys are left out.
    """
    h = hashlib.sha256()
    config = getattr(module, "config", {})
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Where the model was loaded from (``_name_or_path``) and which library version wrote its
    # config say nothing about its weights: leave them out, so that the same model moved to
    # another folder or machine finds its cache (and prints the same file name).
    config = {k: v for k, v in config.items() if not k.startswith("_") or k == "_class_name"}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in list(module.state_dict().items())[::7]:
        h.update(name.encode())
        flat = p.detach().float().flatten()
        h.update(flat[:: max(1, flat.numel() // 64)].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_fingerprint(
    components: SDComponents,
    examples: list[EmojiExample],
    resolution_px: int,
    caption_template: str,
    extra_prompts: list[str],
) -> str:
    """Fingerprint of model, data, resolution and captions (what the cache depends on)."""
    h = hashlib.sha256()
    parts = {
        "version": CACHE_FORMAT_VERSION,
        "vae": weights_fingerprint(components.vae),
        "text_encoder": weights_fingerprint(components.text_encoder),
        "resolution_px": resolution_px,
        "caption_template": caption_template,
        "captions": [e.caption for e in examples],
        "extra_prompts": list(extra_prompts),
    }
    if components.text_encoder_2 is not None:  # SDXL: its second encoder, the pictures' sizes
        parts["text_encoder_2"] = weights_fingerprint(components.text_encoder_2)
        parts["original_sizes"] = [getattr(e, "original_size", None) for e in examples]
    h.update(json.dumps(parts, sort_keys=True).encode())
    for e in examples:
        h.update(e.image.tobytes()[::97])
    return h.hexdigest()[:20]


def build_or_load_cache(
    components: SDComponents,
    examples: list[EmojiExample],
    cache_folder: str | os.PathLike,
    resolution_px: int,
    caption_template: str,
    extra_prompts: list[str] = (),
    label: str = "train",
) -> dict[str, torch.Tensor]:
    """The encoded dataset, from disk if a matching cache exists, else computed and saved.

    Returns:
        ``{"latent_mean": (N,4,h,w), "latent_std": (N,4,h,w), "text": (N,77,D),
        "extra_text": (P,77,D)}``, all fp32 on CPU; ``extra_text`` holds
        ``extra_prompts`` (the empty prompt, validation prompts) in order. SDXL adds
        ``pooled`` ``(N, 1280)``, ``extra_pooled`` ``(P, 1280)`` and ``time_ids`` ``(N, 6)``.
    """
    extra_prompts = list(extra_prompts)
    key = cache_fingerprint(
        components,
        examples,
        resolution_px,
        caption_template=caption_template,
        extra_prompts=extra_prompts,
    )
    path = Path(cache_folder) / f"{label}-{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    mean, std = encode_images(components, examples)
    captions = encode_prompt_tensors(components, [e.caption for e in examples])
    extra = encode_prompt_tensors(components, extra_prompts or [""])
    per_image = family_of(components.unet).image_conditioning(examples, resolution_px)
    tensors = {"latent_mean": mean.contiguous(), "latent_std": std.contiguous()}
    for key, value in captions.items():
        tensors[key] = value.contiguous()
        tensors["extra_" + key] = extra[key].contiguous()
    tensors.update({k: v.contiguous() for k, v in per_image.items()})
    advice = "Free some space there, or set STABLEEMOTE_CACHE to a folder on a disk with room."
    with explain_write_errors("the encoded-data cache", path, advice):
        save_state_dict_atomic(tensors, path, {"fingerprint": key, "examples": str(len(examples))})
    return tensors
