import json

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils.data import (
    CATEGORIES,
    balanced_sample,
    emoji_category,
    image_to_tensor,
    images_to_tensor,
    is_heldout,
    load_emoji_dataset,
    square_resize,
    tensor_to_images,
    to_rgb_on_white,
)
from stableemote_utils.emoji_fonts import emoji_name, noto_emoji_chars
from stableemote_utils.errors import StableEmoteError


def _transparent_red_square(size: int = 32) -> Image.Image:
    # Transparent pixels carry black colour underneath, as many emoji PNGs do.
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (8, 8, 24, 24))
    return img


def _folder(tmp_path, rows, images):
    for name, image in images.items():
        image.save(tmp_path / name)
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return tmp_path


def test_alpha_is_composited_onto_white():
    rgb = np.asarray(to_rgb_on_white(_transparent_red_square()))
    assert rgb[16, 16].tolist() == [255, 0, 0]
    assert rgb[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "LA", "I;16", "RGBA"])
def test_every_image_mode_loads(mode):
    base = _transparent_red_square()
    if mode == "I;16":
        arr = np.full((32, 32), 65535, dtype=np.uint16)
        arr[8:24, 8:24] = 0
        img = Image.fromarray(arr, mode="I;16")
    elif mode == "P":
        img = base.convert("P")
    else:
        img = base.convert(mode)
    out = np.asarray(to_rgb_on_white(img))
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8
    if mode in ("LA", "P", "RGBA"):
        assert out[0, 0].tolist() == [255, 255, 255]  # transparent corner -> white
    if mode == "I;16":
        assert out[0, 0].tolist() == [255, 255, 255] and out[16, 16].tolist() == [0, 0, 0]


def test_palette_with_transparency_index():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    out = np.asarray(to_rgb_on_white(img))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [255, 0, 0]


def test_tensor_round_trip_range_and_shape():
    img = square_resize(to_rgb_on_white(_transparent_red_square(40)), 16)
    t = image_to_tensor(img)
    assert t.shape == (3, 16, 16)
    assert t.min() >= -1 and t.max() <= 1
    batch = images_to_tensor([img, img])
    assert batch.shape == (2, 3, 16, 16)
    back = tensor_to_images(batch)[0]
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_square_resize_pads_with_white():
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    out = np.asarray(square_resize(img, 20))
    assert out.shape == (20, 20, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[10, 10].tolist() == [0, 0, 255]


def test_local_folder_loads_with_captions(tmp_path):
    folder = _folder(
        tmp_path,
        [{"file_name": "a.png", "text": "red square"}],
        {"a.png": _transparent_red_square()},
    )
    [ex] = load_emoji_dataset(str(folder), 16, split="all")
    assert ex.caption == "An emoji of red square"
    assert ex.image.size == (16, 16) and ex.image.mode == "RGB"


def test_local_folders_are_read_by_us_not_by_datasets_imagefolder(tmp_path):
    """Why a local folder is not loaded with datasets' ``imagefolder`` builder.

    It reads the same folder, but a row without a caption loads silently as ``None``, a
    ``file_name`` outside the folder gives a bare "An error occurred while generating the
    dataset", and it writes an Arrow cache outside the folder it was given.
    """
    import datasets

    image = _transparent_red_square()
    rows = [{"file_name": "a.png", "text": "red square"}, {"file_name": "b.png"}]
    (tmp_path / "set").mkdir()
    (tmp_path / "escape").mkdir()
    folder = _folder(tmp_path / "set", rows, {"a.png": image, "b.png": image})
    cache = tmp_path / "hf-cache"
    theirs = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache))
    assert theirs["train"]["text"] == ["red square", None]
    assert any(p.is_file() for p in cache.rglob("*")), "an Arrow cache outside the folder"
    with pytest.raises(StableEmoteError, match="no caption field"):
        load_emoji_dataset(str(folder), 16, split="all")

    rows = [{"file_name": "a.png", "text": "red square"}, {"file_name": "../c.png", "text": "c"}]
    folder = _folder(tmp_path / "escape", rows, {"a.png": image})
    image.save(tmp_path / "c.png")
    with pytest.raises(datasets.exceptions.DatasetGenerationError):
        datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(cache))
    with pytest.raises(StableEmoteError, match="line 2 names the file '../c.png'"):
        load_emoji_dataset(str(folder), 16, split="all")


def test_corrupt_file_is_reported_by_path_and_skipped(tmp_path, capsys):
    images = {f"{i}.png": _transparent_red_square() for i in range(20)}
    folder = _folder(
        tmp_path, [{"file_name": f"{i}.png", "text": f"emoji {i}"} for i in range(20)], images
    )
    (folder / "7.png").write_bytes(b"this is not a png")
    out = load_emoji_dataset(str(folder), 16, split="all")
    assert len(out) == 19
    err = capsys.readouterr().err
    assert str(folder / "7.png") in err
    assert "skipped 1 of 20" in err


def test_too_many_corrupt_files_stop(tmp_path):
    images = {f"{i}.png": _transparent_red_square() for i in range(4)}
    folder = _folder(
        tmp_path, [{"file_name": f"{i}.png", "text": f"emoji {i}"} for i in range(4)], images
    )
    for i in range(2):
        (folder / f"{i}.png").write_bytes(b"broken")
    with pytest.raises(StableEmoteError, match="2 of 4 images could not be read"):
        load_emoji_dataset(str(folder), 16, split="all")


def test_missing_image_file_counts_as_unreadable(tmp_path, capsys):
    images = {f"{i}.png": _transparent_red_square() for i in range(20)}
    rows = [{"file_name": f"{i}.png", "text": f"emoji {i}"} for i in range(20)]
    rows.append({"file_name": "gone.png", "text": "gone"})
    folder = _folder(tmp_path, rows, images)
    assert len(load_emoji_dataset(str(folder), 16, split="all")) == 20
    assert "gone.png" in capsys.readouterr().err


def test_empty_caption_names_the_row(tmp_path):
    folder = _folder(
        tmp_path,
        [{"file_name": "a.png", "text": "ok"}, {"file_name": "b.png", "text": "  "}],
        {"a.png": _transparent_red_square(), "b.png": _transparent_red_square()},
    )
    with pytest.raises(StableEmoteError, match="line 2.*b.png.*empty caption"):
        load_emoji_dataset(str(folder), 16, split="all")


def test_folder_without_metadata(tmp_path):
    with pytest.raises(StableEmoteError, match="metadata.jsonl"):
        load_emoji_dataset(str(tmp_path), 16)


def test_bad_template_and_split():
    with pytest.raises(StableEmoteError, match="placeholder"):
        load_emoji_dataset("noto", 16, caption_template="An emoji")
    with pytest.raises(StableEmoteError, match="split"):
        load_emoji_dataset("noto", 16, split="validation")


def test_heldout_is_deterministic_and_disjoint():
    names = [f"emoji number {i}" for i in range(2000)]
    held = {n for n in names if is_heldout(n, 0.05)}
    assert 50 < len(held) < 150
    assert held == {n for n in names if is_heldout(n, 0.05)}
    assert is_heldout("Cat Face", 0.05) == is_heldout("cat face", 0.05)


def test_noto_set_renders_offline_with_disjoint_split():
    train = load_emoji_dataset("noto", 32, split="train")
    held = load_emoji_dataset("noto", 32, split="heldout")
    assert len(train) > 1500
    assert 40 < len(held) < 200
    assert not {e.name for e in train} & {e.name for e in held}
    assert all(e.image.size == (32, 32) for e in train[:50])
    grinning = next(e for e in train + held if e.name == "grinning face")
    px = np.asarray(grinning.image)
    assert px[0, 0].tolist() == [255, 255, 255]  # background is white, not black
    assert px[16, 16, 0] > 150 and px[16, 16, 2] < 120  # a yellow face in the middle
    assert torch.is_tensor(image_to_tensor(grinning.image))


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StableEmoteError, match="--dataset noto"):
        load_emoji_dataset("no-such-owner/no-such-emoji-set", 16)


@pytest.mark.parametrize(
    ("name", "char", "category"),
    [
        ("Afghanistan", "\U0001f1e6\U0001f1eb", "flag"),  # a country flag's name is the country
        (
            "Scotland",
            "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
            "flag",
        ),
        ("flag: Japan", "", "flag"),  # a Hub set's name, no character
        ("grinning face", "", "face"),
        ("cat with tears of joy", "", "face"),
        ("smiling cat", "", "face"),
        ("teddy bear", "", "activity"),  # the phrase wins over the word "bear"
        ("polar bear", "", "animal & plant"),
        ("poultry leg", "", "food & drink"),
        ("woman running", "", "person"),
        ("rocket", "", "travel & place"),
        ("red heart", "", "symbol"),
        ("1st place medal", "", "activity"),
        ("magnet", "", "object"),
        ("Japan", None, "flag"),  # the character looked up by name
        ("Japan", "", "object"),  # no character, and the name alone says nothing
    ],
)
def test_emoji_category(name, char, category):
    assert emoji_category(name, char) == category


def _noto_names() -> list[str]:
    return [emoji_name(e) for e in noto_emoji_chars()]


def test_first_rows_are_flags_but_the_balanced_sample_is_proportional():
    from collections import Counter

    names = _noto_names()
    chars = dict(zip(names, noto_emoji_chars(), strict=True))

    def shares(indices):
        got = Counter(emoji_category(names[i], chars[names[i]]) for i in indices)
        return {c: got[c] / len(indices) for c in CATEGORIES}

    everything = shares(range(len(names)))
    first = shares(range(256))  # what rows[:256] used to train on
    assert first["flag"] > 2 * everything["flag"]
    chosen = balanced_sample(names, 256, seed=0)
    assert len(set(chosen)) == 256 and chosen == sorted(chosen)
    got = shares(chosen)
    for c in CATEGORIES:  # every category within one emoji of its exact share
        assert abs(got[c] - everything[c]) * 256 <= 1, (c, got[c], everything[c])
    assert balanced_sample(names, 256, seed=0) == chosen
    assert balanced_sample(names, 256, seed=1) != chosen
    assert balanced_sample(names[:10], 256) == list(range(10))


def test_limit_draws_a_balanced_subset_not_the_first_rows(tmp_path):
    names = [f"Country {i}" for i in range(8)] + ["grinning face", "pizza", "cat", "rocket"]
    images = {f"{i}.png": Image.new("RGB", (8, 8), "white") for i in range(len(names))}
    rows = [{"file_name": f"{i}.png", "text": n} for i, n in enumerate(names)]
    folder = _folder(tmp_path, rows, images)
    got = [e.name for e in load_emoji_dataset(str(folder), 8, split="all", limit=6)]
    assert len(got) == 6
    assert {"grinning face", "pizza", "cat", "rocket"} & set(got)
    assert got != names[:6]
