"""Every figure in ``images/``, made by this repository's code: ``stableemote figures``.

Each figure's content comes from configs, the real CLIP tokenizer, or the offline emoji
set, not from trained weights, so the same command gives the same pictures anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from stableemote_utils.images import IMAGES_DIR

# A spread of faces, animals, objects and symbols for the dataset figure.
DATASET_FIGURE_NAMES = (
    "grinning face",
    "smiling face with heart-eyes",
    "crying face",
    "winking face",
    "cat face",
    "dog face",
    "unicorn",
    "robot",
    "red heart",
    "rocket",
    "pizza",
    "rainbow",
    "ghost",
    "fire",
    "party popper",
    "thumbs up",
)


def figure_dataset_noto(path: str | os.PathLike) -> Path:
    """A labelled grid of 16 emoji from the offline ``noto`` set, at 128 px."""
    from stableemote_utils.data import load_emoji_dataset
    from stableemote_utils.images import image_grid, save_image

    by_name = {e.name: e for e in load_emoji_dataset("noto", 128, "{name}", split="all")}
    missing = [n for n in DATASET_FIGURE_NAMES if n not in by_name]
    if missing:
        raise RuntimeError(f"emoji missing from the noto set: {missing}")
    chosen = [by_name[n] for n in DATASET_FIGURE_NAMES]
    grid = image_grid([e.image for e in chosen], [e.caption for e in chosen], cols=8, cell_px=112)
    return save_image(grid, path)


STYLE_FIGURE_NAMES = (
    "grinning face",
    "cat face",
    "red heart",
    "rocket",
    "pizza",
    "rainbow",
    "thumbs up",
    "ghost",
)


def figure_dataset_styles(path: str | os.PathLike) -> Path:
    """The same eight emoji in the two offline styles: Noto (top row), OpenMoji (bottom)."""
    from stableemote_utils.data import load_emoji_dataset
    from stableemote_utils.images import image_grid, save_image

    rows = []
    for style in ("noto", "openmoji"):
        by_name = {e.name: e.image for e in load_emoji_dataset(style, 128, "{name}", split="all")}
        missing = [n for n in STYLE_FIGURE_NAMES if n not in by_name]
        if missing:
            raise RuntimeError(f"emoji missing from the {style} set: {missing}")
        rows += [by_name[n] for n in STYLE_FIGURE_NAMES]
    grid = image_grid(
        rows,
        cols=len(STYLE_FIGURE_NAMES),
        cell_px=96,
        caption_lines=0,
        row_labels=["Noto", "OpenMoji"],
        col_labels=list(STYLE_FIGURE_NAMES),
    )
    return save_image(grid, path)


def all_figures() -> dict[str, Callable[[Path], Path]]:
    """File name in ``images/`` -> the function that makes it."""
    from stableemote_utils import denoising, lora, text, vae

    return {
        "dataset_noto.png": figure_dataset_noto,
        "dataset_styles.png": figure_dataset_styles,
        "vae_latent_vs_pixel_cost.png": vae.figure_latent_vs_pixel_cost,
        "clip_token_table.png": text.figure_token_table,
        "noise_schedule.png": denoising.figure_noise_schedule,
        "sd15_pipeline_shapes.png": denoising.figure_sd15_pipeline,
        "lora_rank_size.png": lora.figure_lora_rank,
    }


def make_figures(
    folder: str | os.PathLike = IMAGES_DIR, only: list[str] | None = None
) -> list[Path]:
    """Write the figures (all, or the named ones) into ``folder``; returns their paths."""
    folder = Path(folder)
    made = []
    for name, make in all_figures().items():
        if only and name not in only:
            continue
        made.append(make(folder / name))
    return made
