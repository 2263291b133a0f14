"""Pictures: labelled image grids and reproducible figure files for ``images/``."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO_ROOT / "images"
LABEL_LINE_PX = 12


def _label_font(size_px: int = 11) -> ImageFont.ImageFont:
    for path in (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ):
        if os.path.exists(path):
            return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size=size_px)


def image_grid(
    images: list[Image.Image],
    captions: list[str] | None = None,
    cols: int | None = None,
    cell_px: int | None = None,
    caption_lines: int = 2,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
) -> Image.Image:
    """Lay images out in a grid, each with an optional caption underneath.

    Args:
        images: N images (any size; each is resized to ``cell_px`` square).
        captions: N captions (wrapped to ``caption_lines`` lines) or ``None``.
        cols: images per row; defaults to ``ceil(sqrt(N))``.
        cell_px: side of each cell; defaults to the first image's width (at least 96).
        caption_lines: lines reserved under each image for its caption.
        row_labels: a label written at the left of each row.
        col_labels: a label written above each column.

    Returns:
        One RGB image on white.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    n = len(images)
    cols = cols or max(1, int(round(n**0.5 + 0.4999)))
    rows = (n + cols - 1) // cols
    cell = cell_px or max(96, images[0].width)
    font = _label_font()
    chars_per_line = max(8, cell // 6)
    text_h = caption_lines * LABEL_LINE_PX + 4 if captions else 0
    left = 8 + max((int(font.getlength(s)) for s in row_labels), default=0) if row_labels else 0
    top = LABEL_LINE_PX + 6 if col_labels else 0
    pad = 4
    grid = Image.new(
        "RGB",
        (left + cols * (cell + pad) + pad, top + rows * (cell + text_h + pad) + pad),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        x = left + pad + c * (cell + pad)
        y = top + pad + r * (cell + text_h + pad)
        grid.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.BICUBIC), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], chars_per_line)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x, y + cell + 2 + j * LABEL_LINE_PX), line, fill=(0, 0, 0), font=font)
    for r, label in enumerate(row_labels or []):
        y = top + pad + r * (cell + text_h + pad) + cell // 2 - LABEL_LINE_PX // 2
        draw.text((4, y), label, fill=(0, 0, 0), font=font)
    for c, label in enumerate(col_labels or []):
        draw.text((left + pad + c * (cell + pad), 3), label, fill=(0, 0, 0), font=font)
    return grid


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG without timestamps or software tags (same pixels, same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure reproducibly (no creation date or version in the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path
