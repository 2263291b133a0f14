"""Loading an SD 1.x or SDXL model: a Hub id or a local folder in the diffusers layout.

An SDXL folder (its UNet takes ``text_time`` added conditioning) also has
``text_encoder_2/`` and ``tokenizer_2/``; what the two families do differently with
their parts is :mod:`stableemote_utils.model_family`'s.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.notices import no_known_notices
from stableemote_utils.presets import Preset, get_preset, is_hub_model_id
from stableemote_utils.tiny_model import (
    ensure_random_sd15,
    ensure_random_sdxl,
    ensure_tiny_model,
    ensure_tiny_xl_model,
)
from stableemote_utils.tinyemote.install import SHIPPED_XL_DIR, ensure_tinyemote

REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    """The parts of Stable Diffusion 1.x (five) or SDXL (seven), loaded and placed on a device.

    Attributes:
        tokenizer: text -> ids, ``(B, 77)``.
        text_encoder: ids ``(B, 77)`` -> hidden states ``(B, 77, D)`` (D = 768 for SD 1.5).
        vae: pixels ``(B, 3, H, W)`` in [-1, 1] <-> latents ``(B, 4, H/8, W/8)``.
        unet: noisy latents, timestep, text states -> predicted noise, same shape as latents.
        scheduler: the noise schedule and sampler.
        device: where the models live.
        dtype: the dtype of their weights.
        source: the model id or folder they came from.
        tokenizer_2, text_encoder_2: SDXL's second tokenizer and text encoder
            (``CLIPTextModelWithProjection``); ``None`` for SD 1.x.
    """

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    source: str
    tokenizer_2: object | None = None
    text_encoder_2: torch.nn.Module | None = None

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        """The text encoders that are loaded (one for SD 1.x, two for SDXL)."""
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def is_sdxl_unet(unet_config) -> bool:
    """Whether a UNet config is SDXL's kind: pooled text and time ids added to the timestep
    embedding (``addition_embed_type="text_time"``)."""
    return dict(unet_config).get("addition_embed_type") == "text_time"


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
    if preset.name == "sdxl-random":
        return str(ensure_random_sdxl(preset.model))
    return preset.model


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
    if not is_hub_model_id(location):
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


def check_hub_model(location: str) -> None:
    """For a Hub model id, fail now, naming the model, if its UNet's ``config.json`` (a file
    :func:`load_components` always reads) cannot be had: offline and not in the local Hub
    cache, no network, no such repo, gated without a token. Asks the Hub (or the cache)
    without downloading; folders pass untouched.

    Training calls this before it reads any data, so a model that cannot be loaded is
    reported as the model, not as the dataset that happens to be read first.

    Raises:
        StableEmoteError: the model cannot be had from the Hub.
    """
    if os.path.exists(os.path.expanduser(location)) or not is_hub_model_id(location):
        return
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(location, "config.json", subfolder="unet", dry_run=True)
    except Exception as err:  # offline, network, missing or gated repo: one clear message
        raise _hub_error(location, err) from err


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
    """Load tokenizer(s), text encoder(s), VAE, UNet and scheduler of an SD 1.x or SDXL model.

    Each part goes to ``device`` as soon as it is loaded, so on a GPU the CPU never holds
    more than one part at a time (SDXL's UNet alone is 5 GB in fp16; Colab has ~12 GB of
    CPU memory). A preset with an ``fp16_vae`` (``sdxl``) takes its VAE from there when
    ``dtype`` is fp16: the stock SDXL VAE overflows to NaN in fp16.

    Args:
        model: a :class:`Preset`, a preset name (``"sd15"``, ``"tiny"``, ``"sdxl"``), a Hub
            id or a folder.
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
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    location = resolve_model_location(model)
    check_model_location(location)
    fp16_vae = getattr(model, "fp16_vae", None) if dtype == torch.float16 else None

    def placed(module: torch.nn.Module) -> torch.nn.Module:
        module.requires_grad_(False)
        module.eval()
        return module.to(device)

    parts: dict = {}
    try:
        sdxl = is_sdxl_unet(UNet2DConditionModel.load_config(location, subfolder="unet"))
        with no_weight_loading_bar():
            parts["tokenizer"] = CLIPTokenizer.from_pretrained(location, subfolder="tokenizer")
            parts["text_encoder"] = placed(
                CLIPTextModel.from_pretrained(location, subfolder="text_encoder", dtype=dtype)
            )
            if sdxl:
                parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(
                    location, subfolder="tokenizer_2"
                )
                parts["text_encoder_2"] = placed(
                    CLIPTextModelWithProjection.from_pretrained(
                        location, subfolder="text_encoder_2", dtype=dtype
                    )
                )
        vae_from = (
            {"pretrained_model_name_or_path": fp16_vae}
            if fp16_vae
            else {
                "pretrained_model_name_or_path": location,
                "subfolder": "vae",
            }
        )
        parts["vae"] = placed(AutoencoderKL.from_pretrained(**vae_from, torch_dtype=dtype))
        parts["unet"] = placed(
            UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=dtype)
        )
        parts["scheduler"] = _load_scheduler(location, sdxl, PNDMScheduler, DDPMScheduler)
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
    return SDComponents(**parts, device=torch.device(device), dtype=dtype, source=location)


def _load_scheduler(location: str, sdxl: bool, *sd1_classes):
    """SD 1.x: PNDM (DDPM for a folder whose config PNDM refuses); SDXL: the class its
    scheduler config names (Euler for SDXL base)."""
    if sdxl:
        from diffusers import EulerDiscreteScheduler, schedulers

        config = EulerDiscreteScheduler.load_config(location, subfolder="scheduler")
        cls = getattr(schedulers, config.get("_class_name", ""), EulerDiscreteScheduler)
        return cls.from_config(config)
    try:
        return sd1_classes[0].from_pretrained(location, subfolder="scheduler")
    except (ValueError, TypeError):
        return sd1_classes[1].from_pretrained(location, subfolder="scheduler")


def make_pipeline(components: SDComponents, scheduler: object | None = None):
    """A ``StableDiffusionPipeline`` (SDXL: ``StableDiffusionXLPipeline``) over already-loaded
    components, safety checker off (SDXL: no watermarker, zeros for an empty negative prompt).

    The pipeline shares the modules (no copies), so a LoRA added to ``components.unet``
    shows in the pipeline.
    """
    with no_known_notices():  # the first import of the pipeline module says them
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    common = {
        "vae": components.vae,
        "text_encoder": components.text_encoder,
        "tokenizer": components.tokenizer,
        "unet": components.unet,
        "scheduler": scheduler or components.scheduler,
    }
    if components.text_encoder_2 is not None:
        pipe = StableDiffusionXLPipeline(
            **common,
            text_encoder_2=components.text_encoder_2,
            tokenizer_2=components.tokenizer_2,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            **common, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.register_to_config(_name_or_path=components.source)  # pipe.name_or_path
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(
    model: Preset | str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load an SD 1.x or SDXL model as a pipeline (see :func:`make_pipeline`)."""
    return make_pipeline(load_components(model, device=device, dtype=dtype))
