"""The tiny CLIP: captions, jitter, the contrastive loss, retrieval, scoring (fast, tiny sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tinyemote import clip as tc


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    from stableemote_utils.tiny_model import write_clip_tokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


def test_caption_variants_have_template_name_and_aliases():
    got = tc.caption_variants("grinning cat", "\U0001f63a")
    assert got == ["An emoji of grinning cat", "grinning cat", "smiley cat"]
    assert tc.caption_variants("rocket") == ["An emoji of rocket", "rocket"]


def test_jitter_is_seeded_keeps_size_and_fills_white():
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    im.paste((200, 0, 0), (16, 16, 48, 48))
    a = tc.jitter(im, np.random.default_rng(1))
    b = tc.jitter(im, np.random.default_rng(1))
    c = tc.jitter(im, np.random.default_rng(2))
    assert a.size == im.size and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert a.getpixel((0, 0)) == (255, 255, 255)
    # the red square is still mostly there: light jitter, not a different picture
    red = (np.asarray(a)[..., 0] > 150) & (np.asarray(a)[..., 1] < 80)
    assert 0.7 * 32 * 32 < red.sum() < 1.4 * 32 * 32


def test_clip_loss_prefers_matching_pairs_and_counts_shared_names_as_positives():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    eye = torch.eye(6, dtype=torch.bool)
    scale = torch.tensor(np.log(20.0))
    assert tc.clip_loss(emb, emb, eye, scale) < tc.clip_loss(emb, emb.roll(1, 0), eye, scale)
    # two texts of one name, two different images of it: each text's target is half on each
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    same = torch.ones(2, 2, dtype=torch.bool)
    s = 10.0
    to_image = -0.5 * torch.log_softmax(torch.tensor([s, 0.0]), 0).sum()
    to_text = torch.log(torch.tensor(2.0))  # each image sees two equal texts
    expected = (to_image + to_text) / 2
    got = tc.clip_loss(text, image, same, torch.tensor(np.log(s)))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_shuffled_moves_every_text():
    texts = [f"t{i}" for i in range(20)]
    out = tc.shuffled(texts, seed=3)
    assert sorted(out) == sorted(texts)
    assert all(a != b for a, b in zip(out, texts, strict=True))
    assert out == tc.shuffled(texts, seed=3)


def test_retrieval_of_a_perfect_and_a_random_model(tokenizer):
    pairs = tc.ClipPairs(
        names=["red", "green", "blue"],
        captions=[["An emoji of red"], ["An emoji of green"], ["An emoji of blue"]],
        images=[[Image.new("RGB", (64, 64), c)] * 2 for c in ("red", "green", "blue")],
    )
    r = tc.retrieval(tc.build_clip(0), tokenizer, pairs, ks=(1, 5))
    assert r["names"] == 3 and r["images"] == 6
    assert r["chance_top1"] == pytest.approx(2 / 6)
    assert r["chance_top5"] == pytest.approx(1.0)
    assert r["top5"] == 1.0  # 5 of 6 images always include one of a name's two


def test_text_tower_is_the_clip_text_transformer(tokenizer):
    clip = tc.build_clip(0).eval()
    text = tc.text_tower(clip)
    ids = tc.tokenize(tokenizer, ["An emoji of cat face", "rocket"])
    a = clip.text_model(input_ids=ids).last_hidden_state
    b = text(input_ids=ids).last_hidden_state
    assert torch.equal(a, b)


def test_score_and_processor(tokenizer):
    clip = tc.build_clip(0).eval()
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGBA", (40, 40), (0, 0, 0, 0))]
    proc = tc.TinyClipProcessor(tokenizer)
    got = proc(images=images, text=["a", "b"], return_tensors="pt")
    assert got["pixel_values"].shape == (2, 3, tc.CLIP_IMAGE_PX, tc.CLIP_IMAGE_PX)
    assert got["pixel_values"][1].min() == 1.0  # transparent -> white
    assert got["input_ids"].shape == (2, tc.CLIP_TEXT_TOKENS)
    scores = tc.tiny_clip_score(clip, tokenizer, images, ["red", "nothing"])
    assert scores.shape == (2,) and (scores >= 0).all() and (scores <= 100).all()
    with pytest.raises(StableEmoteError, match="one each"):
        tc.tiny_clip_score(clip, tokenizer, images, ["red"])


def test_a_short_training_run_lowers_the_loss_and_repeats(tokenizer):
    config = tc.ClipTrainConfig(steps=30, batch_size=8, max_names=8, eval_every=30)
    model, record = tc.train_clip(config, tokenizer)
    losses = record["losses"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert record["train_names"] == 8 and set(record["heldout_retrieval"]) == {30}
    _, again = tc.train_clip(config, tokenizer)
    assert again["losses"] == losses


def test_missing_clip_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StableEmoteError, match="pretrain-tiny"):
        tc.load_tiny_clip(tmp_path)
