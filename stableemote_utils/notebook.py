"""The config cell every notebook starts with: preset, device and precision, printed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.precision import choose_dtype, dtype_name, pick_device
from stableemote_utils.presets import (
    PRECISION_ENV_VAR,
    Preset,
    check_cache_dir,
    get_preset,
    precision_setting,
    sdxl_twin,
)


@dataclass(frozen=True)
class NotebookConfig:
    """What a notebook runs on.

    Attributes:
        preset: model, data and sizes (``sd15`` on Colab, ``tiny`` offline).
        device: where the models run.
        dtype: compute dtype from the precision policy.
        precision_reason: one line saying why that dtype.
    """

    preset: Preset
    device: torch.device
    dtype: torch.dtype
    precision_reason: str


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def model_label(preset: Preset) -> str:
    """How the config cell names the model: a Hub id as it is, a local folder by its name.

    A local folder's full path names the machine (a user's home, a cache), so it is not
    printed: stored notebook outputs must read the same on every machine.
    """
    if os.path.isabs(preset.model):
        return f"{os.path.basename(os.path.normpath(preset.model))} (a local folder)"
    return preset.model


def notebook_setup(
    preset: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    seed: int = 0,
    family: str = "sd15",
) -> NotebookConfig:
    """Read the preset (argument, else ``$STABLEEMOTE_PRESET``, else ``sd15``), pick device
    and precision (argument, else ``$STABLEEMOTE_PRECISION``, else the policy: fp16 on a
    GPU below compute capability 8.0, bf16 from 8.0, fp32 on CPU), seed torch, print the
    choices and return them. With ``family="sdxl"`` (notebook 07) the preset read is turned
    into its SDXL twin (:func:`~stableemote_utils.presets.sdxl_twin`: ``tiny`` ->
    ``tiny-xl``, ``sd15`` -> ``sdxl``), so one ``$STABLEEMOTE_PRESET`` serves the course.

    Raises:
        StableEmoteError: the ``sd15`` or ``sdxl`` preset on a machine without a GPU (a Colab runtime
            without one), unless ``device`` asks for the CPU on purpose; a preset name that
            is no preset, folder or Hub id; a ``$STABLEEMOTE_CACHE`` that is a file or
            cannot be written in.
    """
    chosen = get_preset(preset)
    if family == "sdxl":
        chosen = get_preset(sdxl_twin(chosen.name if chosen.name != "custom" else chosen.model))
    check_cache_dir()
    dev = pick_device(device)
    if chosen.name in ("sd15", "sdxl") and dev.type == "cpu" and device is None:
        # On a CPU the real model takes hours where a T4 takes minutes: stop and say why.
        tiny = "TinyEmote-XL" if chosen.name == "sdxl" else "TinyEmote"
        raise StableEmoteError(
            f"The {chosen.name} preset needs a GPU and this runtime has none. On Colab: "
            "Runtime > Change runtime type > T4 GPU, then run the notebook again. Without a "
            f"GPU: set STABLEEMOTE_PRESET=tiny to follow the course with {tiny} on the CPU."
        )
    asked = precision_setting(precision)
    dtype, reason = choose_dtype(dev, asked)
    if asked and not precision:
        reason = f"{dtype_name(dtype)} because {PRECISION_ENV_VAR}={asked}."
    torch.manual_seed(seed)
    source = (
        "argument"
        if preset
        else ("STABLEEMOTE_PRESET" if os.environ.get("STABLEEMOTE_PRESET") else "default")
    )
    print(f"preset:    {chosen.name} ({source}) -> model {model_label(chosen)}")
    print(
        f"data:      {chosen.dataset}, {chosen.resolution_px} px, captions '{chosen.caption_template}'"
    )
    print(f"device:    {dev}")
    print(f"precision: {dtype_name(dtype)} - {reason}")
    return NotebookConfig(preset=chosen, device=dev, dtype=dtype, precision_reason=reason)
