"""TinyEmote's pretraining: VAE, tiny CLIP and full-UNet stages, deterministic and resumable."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tinyemote.install import SHIPPED_DIR
from stableemote_utils.tinyemote.pretrain import (
    PretrainConfig,
    balanced_noto_folder,
    is_flag,
    pretrain_tiny,
)
from stableemote_utils.vae import psnr


def _digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def _quick(out) -> PretrainConfig:
    return PretrainConfig(
        output_dir=str(out),
        vae_steps=3,
        vae_batch_size=4,
        unet_steps=3,
        unet_batch_size=4,
        clip_steps=2,
        max_examples=8,
    )


@pytest.mark.slow
def test_pretrain_is_deterministic_and_exports_a_loadable_model(tmp_path):
    from stableemote_utils.loading import load_components

    a = pretrain_tiny(_quick(tmp_path / "a"))
    pretrain_tiny(_quick(tmp_path / "b"))
    model = tmp_path / "a" / "tinyemote"
    assert _digests(model) == _digests(tmp_path / "b" / "tinyemote")
    for part in ("unet", "vae", "text_encoder", "clip"):  # no folder of this machine
        assert "_name_or_path" not in json.loads((model / part / "config.json").read_text())
    assert set(_digests(model)) == {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "clip/model.safetensors",
    }
    assert a["device"] == "cpu" and a["seconds"] > 0
    assert 0 <= a["clip_heldout_retrieval"]["top1"] <= 1
    # the UNet really trained: its weights differ from the random start
    start = load_components(str(tmp_path / "a" / "start")).unet.state_dict()
    end = UNet2DConditionModel.from_pretrained(tmp_path / "a" / "model-fp32", subfolder="unet")
    changed = [k for k, v in end.state_dict().items() if not torch.equal(v, start[k])]
    assert len(changed) > len(start) // 2
    # the text encoder is the tiny CLIP's text tower, not the random one
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(tmp_path / "a" / "clip")
    text = CLIPTextModel.from_pretrained(tmp_path / "a" / "model-fp32", subfolder="text_encoder")
    text_state = getattr(text, "text_model", text).state_dict()
    for k, v in clip.text_model.state_dict().items():
        assert torch.equal(text_state[k], v), k


def test_balanced_data_repeats_everything_but_flags(tmp_path):
    import json

    folder = balanced_noto_folder(tmp_path / "data", repeats=3)
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    count: dict[str, int] = {}
    for r in rows:
        count[r["text"]] = count.get(r["text"], 0) + 1
    flags = {r["text"] for r in rows if is_flag(r["text"], r.get("emoji", ""))}
    assert flags and all(count[n] == 1 for n in flags)
    assert all(c == 3 for n, c in count.items() if n not in flags)
    assert all((folder / r["file_name"]).exists() for r in rows)


def test_openmoji_word_adds_the_training_names_openmoji_drawings_under_that_word(tmp_path):
    from stableemote_utils.data import is_heldout

    plain = balanced_noto_folder(tmp_path / "plain", repeats=2)
    mixed = balanced_noto_folder(tmp_path / "mixed", repeats=2, openmoji_word="openmoji")

    def rows(folder):
        lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    noto, both = rows(plain), rows(mixed)
    assert both[: len(noto)] == noto  # the Noto passes are unchanged
    extra = both[len(noto) :]
    assert extra and all(r["file_name"].startswith("openmoji-") for r in extra)
    assert all(r["text"].startswith("openmoji ") for r in extra)
    names = [r["text"].removeprefix("openmoji ") for r in extra]
    assert len(set(names)) == len(names)  # each drawing once
    assert not any(is_heldout(n, 0.05) for n in names)  # held-out names stay out
    assert not any(is_heldout(r["text"], 0.05) for r in extra)  # ... of either split
    assert sum(is_heldout(r["text"], 0.05) for r in noto) > 0  # ... though Noto has them
    assert all((mixed / r["file_name"]).exists() for r in extra)
    opened = Image.open(mixed / extra[0]["file_name"])
    assert opened.size == Image.open(mixed / noto[0]["file_name"]).size


def test_openmoji_word_must_be_a_plain_word(tmp_path):
    for bad in ("", "  ", "{name}"):
        with pytest.raises(StableEmoteError, match="openmoji-word"):
            balanced_noto_folder(tmp_path / "d", repeats=1, openmoji_word=bad)
    assert not (tmp_path / "d").exists()
    config = _quick(tmp_path / "run")
    config.openmoji_word = "{name}"
    with pytest.raises(StableEmoteError, match="openmoji-word"):
        pretrain_tiny(config)  # refused before any stage runs
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_clip_from_reuses_a_saved_tiny_clip_and_measures_it_again(tmp_path):
    from transformers import CLIPModel

    config = _quick(tmp_path / "run")
    config.clip_from = str(SHIPPED_DIR / "clip")
    config.unet_steps = 1
    record = pretrain_tiny(config)
    got = CLIPModel.from_pretrained(tmp_path / "run" / "clip").state_dict()
    shipped = CLIPModel.from_pretrained(SHIPPED_DIR / "clip").state_dict()
    assert all(torch.equal(got[k], shipped[k].float()) for k in shipped)
    saved = json.loads((tmp_path / "run" / "clip" / "clip_training.json").read_text())
    assert saved["seconds"] == 0.0 and saved["reused_from"] == config.clip_from
    assert record["clip_heldout_retrieval"] == saved["heldout_retrieval"]["0"]
    assert 0 <= record["clip_heldout_retrieval"]["top1"] <= 1


def test_clip_from_a_folder_without_a_model_says_so(tmp_path):
    config = _quick(tmp_path / "run")
    config.clip_from = str(tmp_path / "nothing")
    with pytest.raises(StableEmoteError, match="clip-from .*config.json"):
        pretrain_tiny(config)
    assert not (tmp_path / "run" / "clip").exists()


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_vae_from_and_unet_from_reuse_earlier_weights(tmp_path):
    from diffusers import AutoencoderKL

    config = _quick(tmp_path / "run")
    config.vae_from = str(SHIPPED_DIR / "vae")
    config.unet_from = str(SHIPPED_DIR / "unet")
    config.unet_steps = 1
    record = pretrain_tiny(config)
    assert record["vae_seconds"] == 0.0
    got = AutoencoderKL.from_pretrained(tmp_path / "run" / "vae").state_dict()
    shipped = AutoencoderKL.from_pretrained(SHIPPED_DIR / "vae").state_dict()
    assert all(torch.equal(got[k], shipped[k].float()) for k in shipped)
    start = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "start", subfolder="unet")
    shipped_unet = UNet2DConditionModel.from_pretrained(SHIPPED_DIR / "unet").state_dict()
    assert all(torch.equal(v, shipped_unet[k].float()) for k, v in start.state_dict().items())


def test_vae_psnr_is_the_formula_on_pixels_rescaled_to_0_1():
    """The pretraining record's PSNR (vae.psnr, range 2) equals 10 log10(1 / MSE) on [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mse_01 = (((x + 1) / 2 - (noisy + 1) / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(x, noisy), 10 * torch.log10(1 / mse_01))
    assert 15 < float(psnr(x, noisy).mean()) < 30
