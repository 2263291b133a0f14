"""Metrics: KID maths, CLIP score on a small random CLIP, the offline skip, held-out loss."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.metrics import (
    CLIP_MODEL_ID,
    clip_image_features,
    clip_score,
    clip_text_features,
    heldout_loss_base_vs_lora,
    image_metrics,
    kid,
    load_clip,
)


def features(n, d=16, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, d), generator=g) + shift


def test_kid_is_near_zero_for_the_same_distribution_and_grows_with_a_shift():
    x = features(400, seed=0)
    same_set = kid(x, x)
    same_dist = kid(x, features(400, seed=1))
    shifted = kid(x, features(400, shift=0.5, seed=1))
    far = kid(x, features(400, shift=2.0, seed=1))
    # Unbiased: about 0 up to sampling noise of order 1/N (it can be slightly negative).
    assert abs(same_set) < 0.05 * shifted
    assert abs(same_dist) < 0.05 * shifted
    assert 0 < shifted < far
    bigger = features(1600, seed=0)
    assert abs(kid(bigger, bigger)) < abs(same_set) / 2  # the noise shrinks with N


def test_kid_matches_a_loop_over_pairs():
    x, y = features(5, d=3, seed=2), features(4, d=3, shift=0.3, seed=3)

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert kid(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-5)


def test_kid_refuses_bad_shapes():
    with pytest.raises(StableEmoteError, match="at least 2"):
        kid(features(1), features(3))
    with pytest.raises(StableEmoteError, match="same d"):
        kid(features(3, d=4), features(3, d=5))


def test_offline_clip_is_skipped_with_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_clip() is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("CLIP metrics skipped") and CLIP_MODEL_ID in out[0]
    assert image_metrics(None, {"base": []}, [], []) == {}


@pytest.fixture(scope="module")
def small_clip(tiny_model_dir):
    """A random CLIP of a few layers with the tiny model's tokenizer (no download)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={**common, "vocab_size": tok.vocab_size, "num_attention_heads": 4},
        vision_config={**common, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=images, tokenizer=tok)


def coloured(rgb):
    return Image.new("RGB", (64, 64), rgb)


def test_clip_score_is_the_scaled_cosine(small_clip):
    imgs = [coloured((255, 0, 0)), coloured((0, 0, 255)), coloured((20, 200, 20))]
    prompts = ["a red square", "a blue square", "a green square"]
    fi, ft = clip_image_features(small_clip, imgs), clip_text_features(small_clip, prompts)
    assert fi.shape == ft.shape == (3, 16)
    torch.testing.assert_close(fi.norm(dim=-1), torch.ones(3))
    expected = (100 * (fi * ft).sum(-1).clamp(min=0)).mean().item()
    score = clip_score(small_clip, imgs, prompts)
    assert score == pytest.approx(expected, rel=1e-5)
    assert 0 <= score <= 100
    with pytest.raises(StableEmoteError, match="one prompt per image"):
        clip_score(small_clip, imgs, prompts[:2])
    result = image_metrics(small_clip, {"base": imgs}, prompts, imgs[::-1])
    assert result["base"]["clip_score"] == pytest.approx(score, rel=1e-5)
    assert result["base"]["kid"] == pytest.approx(kid(fi, fi.flip(0)), rel=1e-5, abs=1e-9)
    assert (result["base"]["n_images"], result["base"]["n_reference"]) == (3, 3)


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_heldout_loss_base_vs_lora(tiny_model_dir, tmp_path):
    from stableemote_utils.loading import load_components, make_pipeline
    from stableemote_utils.lora import add_lora
    from stableemote_utils.lora_files import save_lora

    pipe = make_pipeline(load_components(str(tiny_model_dir)))
    unet = copy.deepcopy(pipe.unet)
    torch.manual_seed(0)
    add_lora(unet, rank=4)
    for name, p in unet.named_parameters():
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05
    file = save_lora(unet, tmp_path)
    first = heldout_loss_base_vs_lora(pipe, file, "tiny")
    assert not getattr(pipe.unet, "peft_config", None)
    assert first["n_examples"] > 0
    assert first["base"] > 0 and first["lora"] > 0
    assert first["base"] != first["lora"]
    again = heldout_loss_base_vs_lora(pipe, file, "tiny")  # from the cache, same numbers
    assert again == first


def test_comparison_clip_scores_name_the_clip(monkeypatch, tmp_path):
    from PIL import Image
    from transformers import CLIPTokenizer

    from stableemote_utils import metrics
    from stableemote_utils.tiny_model import write_clip_tokenizer
    from stableemote_utils.tinyemote.clip import TinyClipProcessor, build_clip

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "tok"))
    clip = (build_clip(0), TinyClipProcessor(tok))
    monkeypatch.setattr(metrics, "load_scoring_clip", lambda *a: (clip, metrics.TINY_CLIP_LABEL))
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "red", "blue")]
    entries = [
        {"model": m, "prompt": f"An emoji of {p}"}
        for p in ("red heart", "rocket")
        for m in ("base", "lora")
    ]
    got = metrics.comparison_clip_scores("tiny", images, entries)
    assert got["clip"] == metrics.TINY_CLIP_LABEL and got["n_images"] == 2
    assert 0 <= got["base"] <= 100 and 0 <= got["lora"] <= 100
    assert "tiny CLIP" in metrics.format_comparison_scores(got)
    monkeypatch.setattr(metrics, "load_scoring_clip", lambda *a: None)
    assert "skipped" in metrics.format_comparison_scores(
        metrics.comparison_clip_scores("tiny", images, entries)
    )
