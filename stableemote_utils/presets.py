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
A Hub model id (``owner/name``) or a local folder uses the ``sd15`` sizes; any other
name is refused, with the list of presets.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace

from stableemote_utils.errors import StableEmoteError

PRESET_ENV_VAR = "STABLEEMOTE_PRESET"
CACHE_ENV_VAR = "STABLEEMOTE_CACHE"
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

    Defaults to ``~/.cache/stableemote``. :func:`check_cache_dir` checks it can be used.
    """
    default = os.path.join(os.path.expanduser("~"), ".cache", "stableemote")
    # Absolute, so a preset's model folder is never mistaken for a Hub id (owner/name).
    return os.path.abspath(os.environ.get(CACHE_ENV_VAR) or default)


def check_cache_dir() -> str:
    """:func:`cache_dir`, created if missing, once a file could be made in it.

    Every command that builds, renders or caches calls this first, and so does the
    notebooks' config cell, so a cache that cannot be used stops the work before it starts.

    Raises:
        StableEmoteError: the path is a file (or lies under one), or the folder cannot be
            created or written in (permissions, a read-only disk).
    """
    folder = cache_dir()
    given = os.environ.get(CACHE_ENV_VAR)
    named = (
        f"{CACHE_ENV_VAR}={given}"
        if given
        else f"The cache folder {folder} (the default; {CACHE_ENV_VAR} chooses another)"
    )
    advice = f"Set {CACHE_ENV_VAR} to a folder you can write in (it is created if missing)" + (
        ", or unset it to use ~/.cache/stableemote." if given else "."
    )
    if os.path.isfile(folder):
        raise StableEmoteError(
            f"{named} names a file, not a folder: the course keeps its models and data in "
            f"that folder. {advice}"
        )
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise StableEmoteError(
            f"{named} cannot be used: {reason}. The course keeps its models and data in that "
            f"folder. {advice}"
        ) from err
    return folder


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


def preset_table() -> dict[str, Preset]:
    """Every preset, by name: the names :func:`get_preset` knows (model folders under the
    current :func:`cache_dir`)."""
    sd15 = Preset(
        name="sd15",
        model=SD15_MODEL_ID,
        resolution_px=256,
        batch_size=8,
        dataset="valhalla/emoji-dataset",
    )
    table = {
        "sd15": sd15,
        # the real architecture, random weights, offline data
        "sd15-random": replace(
            sd15, name="sd15-random", model=random_sd15_dir(), dataset="openmoji"
        ),
        "tiny": Preset(
            name="tiny",
            model=tinyemote_dir(),
            resolution_px=64,
            batch_size=4,
            dataset="openmoji",
            sample_steps=25,
            guidance_scale=TINYEMOTE_GUIDANCE,
        ),
        "tiny-random": Preset(
            name="tiny-random",
            model=tiny_model_dir(),
            resolution_px=64,
            batch_size=4,
            dataset="noto",
            sample_steps=10,
            guidance_scale=TINYEMOTE_GUIDANCE,  # TinyEmote's architecture, so its scale
        ),
    }
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
    table["sdxl"] = sdxl
    # the real architecture, random weights, offline data
    table["sdxl-random"] = replace(
        sdxl, name="sdxl-random", model=random_sdxl_dir(), dataset="openmoji", fp16_vae=None
    )
    # TinyEmote-XL: TinyEmote's sizes, data and guidance on SDXL's architecture
    table["tiny-xl"] = replace(
        table["tiny"], name="tiny-xl", model=tinyemote_xl_dir(), family="sdxl"
    )
    table["tiny-xl-random"] = replace(
        table["tiny-random"], name="tiny-xl-random", model=tiny_xl_model_dir(), family="sdxl"
    )
    return table


# Each SD 1.5 preset's SDXL twin: the same world (real, tiny or random) in the other family.
# Notebook 07 runs under the learner's STABLEEMOTE_PRESET (``tiny`` offline, ``sd15`` on
# Colab) and turns to SDXL through this table.
SDXL_TWINS = {
    "sd15": "sdxl",
    "sd15-random": "sdxl-random",
    "tiny": "tiny-xl",
    "tiny-random": "tiny-xl-random",
}


def sdxl_twin(name: str) -> str:
    """The SDXL preset that matches the preset ``name`` (``"tiny"`` -> ``"tiny-xl"``,
    ``"sd15"`` -> ``"sdxl"``); an SDXL preset, a Hub id or a folder is returned as it is."""
    return SDXL_TWINS.get(name.strip().lower(), name)


def is_hub_model_id(text: str) -> bool:
    """True for ``owner/name`` as the Hub's own rules allow it (``validate_repo_id``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1


def get_preset(name_or_model: str | None = None) -> Preset:
    """Turn a preset name, a Hub model id or a local folder into a :class:`Preset`.

    Args:
        name_or_model: a name from :func:`preset_table` (``"sd15"``, ``"tiny"`` ...), a Hub
            id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` or a local folder.
            ``None`` reads ``$STABLEEMOTE_PRESET`` and falls back to ``"sd15"``.

    Returns:
        The preset. Model ids and folders get the ``sd15`` sizes and data.

    Raises:
        StableEmoteError: for an empty name, or one that is neither a preset, a path that
            exists nor shaped like a Hub id (the message lists the presets and suggests
            the nearest).
    """
    from_env = name_or_model is None and bool(os.environ.get(PRESET_ENV_VAR, ""))
    if name_or_model is None:
        name_or_model = os.environ.get(PRESET_ENV_VAR, "") or DEFAULT_PRESET
    key = name_or_model.strip()
    if not key:
        raise StableEmoteError(
            "The preset name is empty. Use 'sd15' (the real model, needs a GPU and network), "
            "'tiny' (TinyEmote: offline, CPU), 'tiny-random', or a model id / local folder."
        )
    presets = preset_table()
    if key.lower() in presets:
        return presets[key.lower()]
    if not (is_hub_model_id(key) or os.path.exists(os.path.expanduser(key))):
        raise _unknown_preset_error(key, list(presets), from_env)
    return replace(presets["sd15"], name="custom", model=key)


def _unknown_preset_error(key: str, names: list[str], from_env: bool = False) -> StableEmoteError:
    """The one line for a name that is no preset, no path here and no Hub id, listing
    ``names`` with a "did you mean" for a near miss (``tiny_random``, ``sd-15``)."""
    import difflib

    given = f"{PRESET_ENV_VAR}={key}" if from_env else f"'{key}'"
    if any(sep in key for sep in ("/", os.sep)) or key.startswith((".", "~")):
        problem = f"The model folder {given} does not exist, and it is not a preset or"
    else:
        problem = f"{given} is not a preset, a folder here or"
    near = difflib.get_close_matches(key.lower(), names, n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    return StableEmoteError(
        f"{problem} a Hub model id (owner/name). The presets are {', '.join(names)}.{hint}"
    )
