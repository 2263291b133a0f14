"""TinyEmote-XL, the ``tiny-xl`` preset's shipped model: small, loadable by SDXL's pipeline, measured."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tinyemote.install import (
    SHARED_FILE,
    SHIPPED_DIR,
    SHIPPED_XL_DIR,
    ensure_tinyemote,
    read_shared,
    shipped_digest,
    strip_shared,
)

BOTH_MODELS_MAX_BYTES = 50e6


def _weights(folder):
    return [f for f in folder.rglob("*") if f.suffix == ".safetensors"]


def test_shipped_xl_weights_are_fp16_safetensors_and_both_tiny_models_fit_50_mb():
    files = list(SHIPPED_XL_DIR.rglob("*"))
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt", ".pth")]
    weights = _weights(SHIPPED_XL_DIR)
    # the text encoders and the VAE are TinyEmote's, shipped once (in TinyEmote's folder)
    assert {f.parent.name for f in weights} == {"unet"}
    assert set(read_shared(SHIPPED_XL_DIR)) == {
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    }
    for f in weights:
        with safe_open(str(f), "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F16"}, f  # noqa: SIM118
    both = sum(f.stat().st_size for f in _weights(SHIPPED_DIR) + weights)
    assert both <= BOTH_MODELS_MAX_BYTES, f"{both / 1e6:.1f} MB"


def _change_tensor(file, key, change):
    """Rewrite one tensor of a safetensors file as ``change(tensor)``."""
    tensors = load_file(file)
    tensors[key] = change(tensors[key])
    save_file(tensors, file)


@pytest.fixture(scope="module")
def installed_xl(tmp_path_factory):
    return ensure_tinyemote(tmp_path_factory.mktemp("xl") / "tinyemote-xl", SHIPPED_XL_DIR)


def test_the_installed_xl_folder_is_whole_with_tinyemotes_encoders_and_vae(installed_xl):
    from transformers import CLIPTextModelWithProjection

    weights = {f.parent.name for f in _weights(installed_xl)}
    assert weights == {"unet", "vae", "text_encoder", "text_encoder_2"}
    for mine, theirs in [("text_encoder", "text_encoder"), ("vae", "vae")]:
        a = load_file(next((installed_xl / mine).glob("*.safetensors")))
        b = load_file(next((SHIPPED_DIR / theirs).glob("*.safetensors")))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # encoder 2 is the tiny CLIP's text tower with its projection, every weight present
    second, info = CLIPTextModelWithProjection.from_pretrained(
        installed_xl / "text_encoder_2", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    clip = load_file(SHIPPED_DIR / "clip" / "model.safetensors")
    assert torch.equal(second.text_projection.weight, clip["text_projection.weight"])


def test_an_xl_install_refuses_a_tinyemote_it_was_not_built_on_and_keeps_the_old_install(
    tmp_path, monkeypatch, installed_xl
):
    from stableemote_utils.tinyemote import install

    other = tmp_path / "other-tinyemote"
    shutil.copytree(SHIPPED_DIR, other)
    vae = other / "vae" / "diffusion_pytorch_model.safetensors"
    _change_tensor(vae, sorted(load_file(vae))[0], lambda t: t + 1)
    source = tmp_path / "xl-source"
    shutil.copytree(SHIPPED_XL_DIR, source)
    target = tmp_path / "installed"
    shutil.copytree(installed_xl, target)
    (source / "scheduler" / "scheduler_config.json").write_text("{}")  # a new model: reinstall
    monkeypatch.setattr(install, "SHIPPED_DIR", other)
    with pytest.raises(StableEmoteError, match="vae/diffusion_pytorch_model.safetensors"):
        ensure_tinyemote(target, source)
    # the earlier install is untouched
    assert {f.parent.name for f in _weights(target)} == {
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
    }
    assert (target / "scheduler" / "scheduler_config.json").read_text() != "{}"


def test_sharing_refuses_weights_that_are_not_tinyemotes_and_removes_nothing(
    tmp_path, installed_xl
):
    built = tmp_path / "built"
    shutil.copytree(installed_xl, built)
    (built / SHARED_FILE).unlink()
    assert strip_shared(built) == read_shared(SHIPPED_XL_DIR)  # same tensors, same listing
    assert {f.parent.name for f in _weights(built)} == {"unet"}

    other = tmp_path / "other"
    shutil.copytree(installed_xl, other)
    (other / SHARED_FILE).unlink()
    encoder = other / "text_encoder_2" / "model.safetensors"
    _change_tensor(encoder, "text_projection.weight", lambda t: t * 2)
    with pytest.raises(StableEmoteError, match="text_encoder_2/model.safetensors"):
        strip_shared(other)
    assert len(_weights(other)) == 4 and not (other / SHARED_FILE).exists()


def test_tiny_xl_preset_loads_tinyemote_xl_in_sdxls_pipeline():
    from stableemote_utils.loading import load_pipeline

    pipe = load_pipeline("tiny-xl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert (
        pipe.tokenizer("a photo of a cat").input_ids
        == pipe.tokenizer_2("a photo of a cat").input_ids
    )
    image = pipe(
        "An emoji of red heart",
        num_inference_steps=25,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    red, green = image[..., 0].mean(), image[..., 1].mean()
    assert red > green  # a red heart on white is redder than it is green


def test_shipped_xl_card_is_the_one_its_records_give(tmp_path):
    from stableemote_utils.tinyemote.card import write_tinyemote_xl_card

    folder = tmp_path / "tinyemote-xl"
    shutil.copytree(SHIPPED_XL_DIR, folder)
    card = write_tinyemote_xl_card(folder).read_text(encoding="utf-8")
    assert card == (SHIPPED_XL_DIR / "README.md").read_text(encoding="utf-8")
    pre = json.loads((folder / "pretrain.json").read_text())
    assert pre["command"] in card and "--family sdxl" in pre["command"]
    assert f"{pre['vae_scaling_factor']:.4f}" in card
    # and it follows its records: other measurements give another card
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["prompt_following"]["accuracy"] = 0.123
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert "12% of" in write_tinyemote_xl_card(folder).read_text(encoding="utf-8")
    (folder / "metrics.json").unlink()
    assert "not measured yet" in write_tinyemote_xl_card(folder).read_text(encoding="utf-8")


def test_tinyemote_xl_follows_prompts_at_least_as_well_as_tinyemote():
    """Measured by ``evaluate-tiny`` on these very weights, at the tiny presets' guidance."""
    from stableemote_utils.presets import get_preset

    xl = json.loads((SHIPPED_XL_DIR / "metrics.json").read_text())
    sd = json.loads((SHIPPED_DIR / "metrics.json").read_text())
    assert shipped_digest(SHIPPED_XL_DIR) in xl["model"] and "TinyEmote-XL" in xl["model"]
    assert xl["sampling"]["guidance"] == get_preset("tiny-xl").guidance_scale
    p, q = xl["prompt_following"], sd["prompt_following"]
    assert (p["images"], p["chance"]) == (q["images"], q["chance"])
    assert p["accuracy"] >= q["accuracy"]


def test_one_tiny_clip_measures_both_tiny_models(tmp_path):
    from stableemote_utils.tinyemote.evaluate import measuring_clip_folder
    from stableemote_utils.tinyemote.install import ensure_tinyemote

    tinyemote = ensure_tinyemote()  # the test session's installed copy
    xl = ensure_tinyemote(tmp_path / "tinyemote-xl", SHIPPED_XL_DIR)
    assert not (xl / "clip").exists()  # TinyEmote-XL has no CLIP of its own
    assert measuring_clip_folder(tinyemote) == tinyemote
    # the instrument is TinyEmote's CLIP, whose text tower both XL encoders are
    measuring = measuring_clip_folder(xl)
    assert measuring == tinyemote and (measuring / "clip" / "config.json").exists()


def test_shipped_xl_metrics_give_the_lora_lessons_probe_and_prompt_following():
    """``evaluate-tiny --preset tiny-xl --card`` measured the LoRA the way notebook 06 does
    for TinyEmote: the style probe and prompt following, training and held-out names."""
    xl = json.loads((SHIPPED_XL_DIR / "metrics.json").read_text())
    assert xl["style_probe"]["heldout_accuracy"] > 0.5
    r = xl["style_and_subject"]
    for split in ("train", "heldout"):
        models = r["splits"][split]["models"]
        assert set(models) == {"base", "base_word", "lora"}
        for m in models.values():
            assert 0 <= m["openmoji"]["share"] <= 1 and 0 <= m["prompt_following"]["share"] <= 1
    card = (SHIPPED_XL_DIR / "README.md").read_text(encoding="utf-8")
    assert "style and subject" in card and "called OpenMoji" in card


def test_the_readme_states_tinyemote_xls_style_and_subject_measurements():
    from pathlib import Path

    from stableemote_utils.tinyemote.card import style_subject_markdown

    record = json.loads((SHIPPED_XL_DIR / "metrics.json").read_text())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert style_subject_markdown(record) in readme
    lora = record["style_and_subject"]["splits"]["train"]["models"]["lora"]
    prose = " ".join(readme.split())  # the README's lines are wrapped
    assert f"calls {lora['openmoji']['share']:.0%} of its pictures OpenMoji" in prose
    pf = lora["prompt_following"]["share"]
    assert f"prompt following {pf:.0%} against the base model's" in prose
