"""Loading any SD-1.x model: a Hub id or a local folder in the diffusers layout."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.notices import no_known_notices
from stableemote_utils.presets import Preset, get_preset
from stableemote_utils.tiny_model import (
    ensure_random_sd15,
    ensure_tiny_model,
    ensure_tiny_xl_model,
)
from stableemote_utils.tinyemote.install import SHIPPED_XL_DIR, ensure_tinyemote

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    """The five parts of Stable Diffusion 1.x, loaded and placed on a device.

    Attributes:
        tokenizer: text -> ids, ``(B, 77)``.
        text_encoder: ids ``(B, 77)`` -> hidden states ``(B, 77, D)`` (D = 768 for SD 1.5).
        vae: pixels ``(B, 3, H, W)`` in [-1, 1] <-> latents ``(B, 4, H/8, W/8)``.
        unet: noisy latents, timestep, text states -> predicted noise, same shape as latents.
        scheduler: the noise schedule and sampler.
        device: where the models live.
        dtype: the dtype of their weights.
        source: the model id or folder they came from.
    """

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    source: str


def resolve_model_location(preset: Preset | str | None = None) -> str:
    """The folder or Hub id to load for a preset; installs or builds a tiny model if needed."""
    if not isinstance(preset, Preset):
        preset = get_preset(preset)
    if preset.name == "tiny":
        return str(ensure_tinyemote(preset.model))
    if preset.name == "tiny-xl":
        return str(ensure_tinyemote(preset.model, SHIPPED_XL_DIR))
    if preset.name == "tiny-xl-random":
        return str(ensure_tiny_xl_model(preset.model))
    if preset.is_tiny:
        return str(ensure_tiny_model(preset.model))
    if preset.name == "sd15-random":
        return str(ensure_random_sd15(preset.model))
    return preset.model


def _is_hub_id(location: str) -> bool:
    """True for ``owner/name`` strings, which from_pretrained looks up on the Hub."""
    parts = location.split("/")
    return len(parts) == 2 and all(parts) and not location.startswith((".", "~"))


def check_model_location(location: str) -> None:
    """Fail early, with a message that says what to do, if ``location`` cannot be an SD model."""
    path = Path(os.path.expanduser(location))
    if path.exists():
        if not path.is_dir():
            raise StableEmoteError(
                f"'{location}' is a file, not a model folder. Pass a folder in the diffusers "
                "layout (with model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/) or a Hub model id such as "
                "'stable-diffusion-v1-5/stable-diffusion-v1-5'."
            )
        missing = [p for p in ("model_index.json", *REQUIRED_SUBFOLDERS) if not (path / p).exists()]
        if missing:
            raise StableEmoteError(
                f"The folder '{location}' is not a diffusers Stable Diffusion model: it lacks "
                f"{', '.join(missing)}. Point to a folder saved with "
                "StableDiffusionPipeline.save_pretrained (or downloaded from the Hub), or use "
                "STABLEEMOTE_PRESET=tiny for the offline model."
            )
        return
    if not _is_hub_id(location):
        raise StableEmoteError(
            f"The model folder '{location}' does not exist. Check the path, pass a Hub model id "
            "such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', or run with "
            "STABLEEMOTE_PRESET=tiny to work offline."
        )


def _hub_error(location: str, err: Exception) -> StableEmoteError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = (
        "HF_HUB_OFFLINE is set and the model is not in the local Hub cache"
        if offline
        else "the Hub could not be reached or the model is not there"
    )
    return StableEmoteError(
        f"Could not load the model '{location}' from the Hugging Face Hub: {why} "
        f"({type(err).__name__}). Check the id and your network (gated or private models also "
        "need a token in HF_TOKEN), or run with STABLEEMOTE_PRESET=tiny to work offline with "
        "the small model built on this machine."
    )


@contextlib.contextmanager
def no_weight_loading_bar():
    """Within the block, transformers draws no "Loading weights" bar; other bars are untouched.

    transformers 5 draws one for every ``from_pretrained``, even from a local folder, which
    only clutters a notebook. Download bars stay, and the previous tqdm hook is restored on
    exit, so the learner's own settings are left as they were.
    """
    from transformers.utils import logging as hf_logging

    previous = None

    def hook(factory, args, kwargs):
        if kwargs.get("desc") == "Loading weights":
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def load_components(
    model: Preset | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """Load tokenizer, text encoder, VAE, UNet and scheduler of an SD-1.x model.

    Args:
        model: a :class:`Preset`, a preset name (``"sd15"``, ``"tiny"``), a Hub id or a folder.
        device: where to put the models.
        dtype: weight dtype (see :func:`stableemote_utils.precision.choose_dtype`).

    Returns:
        The components, in eval mode, with gradients off.

    Raises:
        StableEmoteError: for a missing folder, a folder that is not an SD model, or a Hub
            id that cannot be fetched.
    """
    with no_known_notices():
        return _load_components(model, device, dtype)


def _load_components(
    model: Preset | str | None, device: str | torch.device, dtype: torch.dtype
) -> SDComponents:
    """:func:`load_components`, with the libraries' known notices still on."""
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    location = resolve_model_location(model)
    check_model_location(location)
    try:
        with no_weight_loading_bar():
            tokenizer = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(
                location, subfolder="text_encoder", dtype=dtype
            )
        vae = AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=dtype)
        try:
            scheduler = PNDMScheduler.from_pretrained(location, subfolder="scheduler")
        except (ValueError, TypeError):
            scheduler = DDPMScheduler.from_pretrained(location, subfolder="scheduler")
    except StableEmoteError:
        raise
    except OSError as err:
        if Path(os.path.expanduser(location)).exists():
            raise StableEmoteError(
                f"The folder '{location}' looks like a diffusers model but a part could not be "
                f"read ({err}). It may be incomplete or from another architecture; re-download it "
                "or rebuild the tiny model by deleting the folder."
            ) from err
        raise _hub_error(location, err) from err
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return SDComponents(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        device=torch.device(device),
        dtype=dtype,
        source=location,
    )


def make_pipeline(components: SDComponents, scheduler: object | None = None):
    """A ``StableDiffusionPipeline`` over already-loaded components, safety checker off.

    The pipeline shares the modules (no copies), so a LoRA added to ``components.unet``
    shows in the pipeline.
    """
    with no_known_notices():  # the first import of the pipeline module says them
        from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler or components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.register_to_config(_name_or_path=components.source)  # pipe.name_or_path
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_sdxl_folder(location: str) -> bool:
    """True when ``location`` is a local folder whose ``model_index.json`` names SDXL's pipeline."""
    index = Path(os.path.expanduser(location)) / "model_index.json"
    if not index.is_file():
        return False
    return json.loads(index.read_text()).get("_class_name") == "StableDiffusionXLPipeline"


def load_pipeline(
    model: Preset | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load an SD-1.x model as a ``StableDiffusionPipeline`` (safety checker off).

    A local SDXL folder (the ``tiny-xl`` presets' TinyEmote-XL) loads as a
    ``StableDiffusionXLPipeline`` instead, progress bar off, on ``device`` in ``dtype``.
    """
    location = resolve_model_location(model)
    if not is_sdxl_folder(location):
        return make_pipeline(load_components(model, device=device, dtype=dtype))
    with no_known_notices():
        from diffusers import StableDiffusionXLPipeline

        with no_weight_loading_bar():
            pipe = StableDiffusionXLPipeline.from_pretrained(location, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
