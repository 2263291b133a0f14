"""Presets: one name turns into everything the course needs to run.

``sd15`` is the real Stable Diffusion 1.5 from the Hub (for Colab and GPUs);
``tiny`` is TinyEmote, the same architecture at small size, pretrained on emoji by this
repo and shipped with it, fine-tuned on OpenMoji's style (rendered from a local font);
``tiny-random`` is the tiny architecture with random weights, built in seconds, for
tests of the machinery; ``sd15-random`` is the full-size SD 1.5 architecture with random
weights (built locally, no download) for checking the real-size path on a CPU.
``sdxl`` is SDXL base 1.0 from the Hub (with the fp16-fix VAE when computing in fp16);
``sdxl-random`` its full-size architecture with random weights, built locally.
``tiny-xl`` is TinyEmote-XL, SDXL's architecture at small size, pretrained here and
shipped like TinyEmote; ``tiny-xl-random`` is that architecture with random weights.
Anything else is taken as a model id or a local folder and uses
the ``sd15`` sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from stableemote_utils.errors import StableEmoteError

PRESET_ENV_VAR = "STABLEEMOTE_PRESET"
# fp32, fp16 or bf16; unset: the precision policy (fp16 on GPUs below compute capability
# 8.0, bf16 from 8.0, fp32 on CPU). CI sets bf16 to run the half-precision path on CPU.
PRECISION_ENV_VAR = "STABLEEMOTE_PRECISION"
DEFAULT_PRESET = "sd15"
CAPTION_TEMPLATE = "An emoji of {name}"
SD15_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINYEMOTE_GUIDANCE = 3.0  # measured: see the model card's prompt following by guidance scale
SDXL_MODEL_ID = "stabilityai/stable-diffusion-xl-base-1.0"
# SDXL's own VAE overflows to NaN in fp16; this one is fine-tuned to keep its activations in range.
SDXL_FP16_VAE_ID = "madebyollin/sdxl-vae-fp16-fix"
# SDXL's recipe on a 16 GB T4: 1024 px fits with gradient checkpointing and 8-bit Adam
# (see `stableemote bench --flops --preset sdxl` for the count).
SDXL_RESOLUTION_PX = 1024
SDXL_GUIDANCE = 5.0  # StableDiffusionXLPipeline's default


@dataclass(frozen=True)
class Preset:
    """Everything that differs between the real model and the tiny one.

    Attributes:
        name: ``"sd15"``, ``"sd15-random"``, ``"tiny"``, ``"tiny-random"``, ``"tiny-xl"``,
            ``"tiny-xl-random"`` or ``"custom"``.
        model: a Hub model id or a local folder in the diffusers layout. For the tiny
            presets this is the folder the model is installed or built into on first use.
        resolution_px: training and sampling resolution (square images).
        batch_size: default training batch size.
        dataset: the emoji set LoRA is trained on (see
            :func:`stableemote_utils.data.load_emoji_dataset`).
        caption_template: how an emoji name becomes a caption; must contain ``{name}``.
        heldout_fraction: share of emoji names kept out of training.
        sample_steps: default number of denoising steps when sampling.
        guidance_scale: default classifier-free guidance scale when sampling. 7.5 suits SD
            1.5; TinyEmote's small UNet overshoots at 7.5 (its colours burn and shapes
            break up), and draws its prompts best near 3.
        family: ``"sd15"`` or ``"sdxl"`` (:mod:`stableemote_utils.model_family`): known
            before the model loads, for the checks that come first.
        fp16_vae: a VAE to use instead of the model's own when computing in fp16 (SDXL's
            overflows there), or ``None``.
        needs_gpu: too large to train or draw on a CPU unless ``--device cpu`` asks for it.
    """

    name: str
    model: str
    resolution_px: int
    batch_size: int
    dataset: str
    caption_template: str = CAPTION_TEMPLATE
    heldout_fraction: float = 0.05
    sample_steps: int = 25
    guidance_scale: float = 7.5
    family: str = "sd15"
    fp16_vae: str | None = None
    needs_gpu: bool = False

    @property
    def is_tiny(self) -> bool:
        """True for the offline presets (TinyEmote and the random tiny model)."""
        return self.name in ("tiny", "tiny-random", "tiny-xl", "tiny-xl-random")


def cache_dir() -> str:
    """The folder for everything the course builds or renders (``$STABLEEMOTE_CACHE``).

    Defaults to ``~/.cache/stableemote``.
    """
    default = os.path.join(os.path.expanduser("~"), ".cache", "stableemote")
    return os.environ.get("STABLEEMOTE_CACHE", default)


def tiny_model_dir() -> str:
    """Where the random-weight tiny model is built on first use."""
    return os.path.join(cache_dir(), "tiny-sd")


def tiny_xl_model_dir() -> str:
    """Where the random-weight TinyEmote-XL architecture (``tiny-xl-random``) is built on first use."""
    return os.path.join(cache_dir(), "tiny-sdxl")


def tinyemote_xl_dir() -> str:
    """Where TinyEmote-XL's shipped weights (``tiny-xl``) are installed on first use."""
    return os.path.join(cache_dir(), "tinyemote-xl")


def random_sd15_dir() -> str:
    """Where the full-size SD 1.5 architecture with random weights is built on first use."""
    return os.path.join(cache_dir(), "sd15-random")


def random_sdxl_dir() -> str:
    """Where the full-size SDXL architecture with random weights is built on first use."""
    return os.path.join(cache_dir(), "sdxl-random")


def tinyemote_dir() -> str:
    """Where TinyEmote's shipped weights are installed on first use."""
    return os.path.join(cache_dir(), "tinyemote")


def precision_setting(precision: str | None = None) -> str | None:
    """The precision asked for: the argument, else ``$STABLEEMOTE_PRECISION``, else ``None``.

    ``None`` leaves the choice to the precision policy
    (:func:`stableemote_utils.precision.choose_dtype`).
    """
    if precision:
        return precision
    return os.environ.get(PRECISION_ENV_VAR, "").strip() or None


def get_preset(name_or_model: str | None = None) -> Preset:
    """Turn a preset name, a Hub model id or a local folder into a :class:`Preset`.

    Args:
        name_or_model: ``"sd15"``, ``"sd15-random"``, ``"tiny"``, ``"tiny-random"``, a Hub id such as
            ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` or a local folder. ``None``
            reads ``$STABLEEMOTE_PRESET`` and falls back to ``"sd15"``.

    Returns:
        The preset. Model ids and folders get the ``sd15`` sizes and data.

    Raises:
        StableEmoteError: for an empty name.
    """
    if name_or_model is None:
        name_or_model = os.environ.get(PRESET_ENV_VAR, "") or DEFAULT_PRESET
    key = name_or_model.strip()
    if not key:
        raise StableEmoteError(
            "The preset name is empty. Use 'sd15' (the real model, needs a GPU and network), "
            "'tiny' (TinyEmote: offline, CPU), 'tiny-random', or a model id / local folder."
        )
    sd15 = Preset(
        name="sd15",
        model=SD15_MODEL_ID,
        resolution_px=256,
        batch_size=8,
        dataset="valhalla/emoji-dataset",
    )
    if key.lower() == "sd15":
        return sd15
    if key.lower() == "sd15-random":  # the real architecture, random weights, offline data
        return replace(sd15, name="sd15-random", model=random_sd15_dir(), dataset="openmoji")
    sdxl = Preset(
        name="sdxl",
        model=SDXL_MODEL_ID,
        resolution_px=SDXL_RESOLUTION_PX,
        batch_size=1,
        dataset="valhalla/emoji-dataset",
        guidance_scale=SDXL_GUIDANCE,
        family="sdxl",
        fp16_vae=SDXL_FP16_VAE_ID,
        needs_gpu=True,
    )
    if key.lower() == "sdxl":
        return sdxl
    if key.lower() == "sdxl-random":  # the real architecture, random weights, offline data
        return replace(
            sdxl, name="sdxl-random", model=random_sdxl_dir(), dataset="openmoji", fp16_vae=None
        )
    if key.lower() == "tiny":
        return Preset(
            name="tiny",
            model=tinyemote_dir(),
            resolution_px=64,
            batch_size=4,
            dataset="openmoji",
            sample_steps=25,
            guidance_scale=TINYEMOTE_GUIDANCE,
        )
    if key.lower() == "tiny-random":
        return Preset(
            name="tiny-random",
            model=tiny_model_dir(),
            resolution_px=64,
            batch_size=4,
            dataset="noto",
            sample_steps=10,
            guidance_scale=TINYEMOTE_GUIDANCE,  # TinyEmote's architecture, so its scale
        )
    if key.lower() in ("tiny-xl", "tiny-xl-random"):
        # TinyEmote-XL: TinyEmote's sizes, data and guidance on SDXL's architecture
        tiny = get_preset(key.lower().replace("-xl", ""))
        model = tinyemote_xl_dir() if key.lower() == "tiny-xl" else tiny_xl_model_dir()
        return replace(tiny, name=key.lower(), model=model, family="sdxl")
    return replace(sd15, name="custom", model=key)
