import hashlib

import numpy as np
from PIL import Image

from stableemote_utils.images import image_grid, save_image


def test_grid_places_images_and_captions():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    grid = image_grid([red, blue, red], ["red", "blue", "red again"], cols=2, cell_px=32)
    arr = np.asarray(grid)
    assert grid.width == 2 * 32 + 3 * 4
    assert arr[4 + 16, 4 + 16].tolist() == [255, 0, 0]
    assert arr[4 + 16, 4 + 32 + 4 + 16].tolist() == [0, 0, 255]
    caption_band = arr[4 + 32 + 2 : 4 + 32 + 14, 4 : 4 + 32]
    assert (caption_band < 128).any(), "caption text should be drawn under the image"


def test_grid_rejects_mismatched_captions():
    import pytest

    with pytest.raises(ValueError, match="captions"):
        image_grid([Image.new("RGB", (8, 8))], ["a", "b"])


def test_saved_png_is_reproducible(tmp_path):
    img = image_grid([Image.new("RGB", (16, 16), (0, 255, 0))], ["green"], col_labels=["base"])
    a = save_image(img, tmp_path / "a.png")
    b = save_image(img, tmp_path / "b.png")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
