"""TinyEmote-XL's build: SDXL's conditioning in training is the SDXL pipeline's, and it repeats."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from stableemote_utils.tiny_model import (
    TINY_XL_UNET_CONFIG,
    TINY_XL_VAE_CONFIG,
    save_xl_pipeline,
    write_clip_tokenizer,
)
from stableemote_utils.tinyemote.install import SHIPPED_DIR
from stableemote_utils.tinyemote.pretrain import PretrainConfig
from stableemote_utils.tinyemote.pretrain_xl import (
    UNET_RUN,
    UNET_WEIGHTS_FILE,
    XLData,
    encode_latent_views,
    encode_xl_prompts,
    pretrain_tiny_xl,
    xl_batch,
    xl_text_encoders,
)


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(SHIPPED_DIR / "clip", dtype=torch.float32).eval()


def test_encoders_are_tinyemotes_text_encoder_and_the_clip_tower_with_its_projection(tiny_clip):
    from transformers import CLIPTextModel

    first, second = xl_text_encoders(tiny_clip)
    shipped = CLIPTextModel.from_pretrained(SHIPPED_DIR / "text_encoder", dtype=torch.float32)
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in shipped.state_dict().items())
    clip_state = tiny_clip.state_dict()
    second_state = second.state_dict()
    assert "text_projection.weight" in second_state
    assert all(torch.equal(v, clip_state[k]) for k, v in second_state.items())


def test_training_embeddings_are_the_sdxl_pipelines(tiny_clip, tmp_path):
    """What the UNet is trained on is what StableDiffusionXLPipeline.encode_prompt feeds it."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    encoders = xl_text_encoders(tiny_clip)
    tokenizer_dir = write_clip_tokenizer(tmp_path / "tokenizer")
    unet = UNet2DConditionModel(**TINY_XL_UNET_CONFIG)
    save_xl_pipeline(
        tmp_path / "m",
        unet,
        AutoencoderKL(**TINY_XL_VAE_CONFIG),
        encoders[0],
        text_encoder_2=encoders[1],
        tokenizer_dir=tokenizer_dir,
    )
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "m")
    prompts = ["An emoji of cat face", "An emoji of openmoji red heart"]
    states, pooled = encode_xl_prompts(
        *encoders, CLIPTokenizer.from_pretrained(tokenizer_dir), prompts
    )
    got = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
    embeds, negative, pooled_pipe, negative_pooled = got
    assert states.shape == (2, 77, TINY_XL_UNET_CONFIG["cross_attention_dim"])
    torch.testing.assert_close(embeds, states, rtol=0, atol=0)
    torch.testing.assert_close(pooled_pipe, pooled, rtol=0, atol=0)
    # a dropped caption is trained as zeros: the pipeline's unconditional input
    assert not negative.any() and not negative_pooled.any()


class PoolingVAE:
    """Stands in for a VAE: its "latents" are the pixels averaged over 8 x 8 cells, std 0."""

    config = SimpleNamespace(scaling_factor=1.0)

    def encode(self, pixels):
        cells = torch.nn.functional.avg_pool2d(pixels, 8)
        mean = torch.cat([cells, cells[:, :1]], dim=1)  # 4 channels
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.zeros_like(mean)))


def test_time_ids_are_each_views_size_and_crop_and_the_mirror_comes_before_the_cut():
    rng = torch.Generator().manual_seed(0)
    pixels = (torch.rand(72, 72, 3, generator=rng) * 255).to(torch.uint8)
    vae = PoolingVAE()
    image = Image.fromarray(pixels.numpy())
    data = XLData(
        image_of=torch.zeros(1, dtype=torch.long),
        caption_of=torch.zeros(1, dtype=torch.long),
        small=encode_latent_views(vae, [image], 64),
        big=encode_latent_views(vae, [image], 72),
        states=torch.ones(1, 77, 8),
        pooled=torch.ones(1, 4),
        size_px=64,
    )
    rows = torch.zeros(64, dtype=torch.long)
    inputs = xl_batch(data, rows, torch.Generator().manual_seed(1), caption_dropout=0.0)
    whole = pixels.permute(2, 0, 1).float() / 127.5 - 1  # the 72 px image, (3, 72, 72)
    seen = set()
    for row, latents in zip(inputs["time_ids"].tolist(), inputs["latents"], strict=True):
        original, _, top, left, target_h, target_w = (int(v) for v in row)
        assert (target_h, target_w) == (64, 64)
        if original == 64:
            assert (top, left) == (0, 0)
            continue
        assert original == 72 and top in (0, 8) and left in (0, 8)
        found = [
            mirrored
            for mirrored in (False, True)
            if torch.allclose(
                latents[:3],
                torch.nn.functional.avg_pool2d(
                    (whole.flip(-1) if mirrored else whole)[
                        None, :, top : top + 64, left : left + 64
                    ],
                    8,
                )[0],
                atol=1e-5,
            )
        ]
        assert found, "the view is not the (mirrored) 72 px image cut at its time ids' corner"
        seen.add((found[0], left))
    assert (True, 8) in seen  # a mirrored view cut 8 px from the left: mirror, then cut


def small_build(folder: Path) -> PretrainConfig:
    return PretrainConfig(
        output_dir=str(folder),
        vae_from=str(SHIPPED_DIR / "vae"),
        clip_from=str(SHIPPED_DIR / "clip"),
        openmoji_word="openmoji",
        unet_steps=4,
        unet_batch_size=4,
        max_examples=8,
        checkpoint_every=2,
        family="sdxl",
        threads=1,
    )


@pytest.mark.slow
def test_build_exports_an_sdxl_folder_and_a_resumed_build_repeats_bit_for_bit(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    record = pretrain_tiny_xl(small_build(tmp_path / "a"))
    model = tmp_path / "a" / "tinyemote-xl"
    write_clip_tokenizer(model / "tokenizer")
    write_clip_tokenizer(model / "tokenizer_2")
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    stored = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}  # half precision, as TinyEmote
    assert pipe.vae.config.scaling_factor == pytest.approx(record["vae_scaling_factor"])
    assert set(record["unet_heldout_loss"]) == {"0", "4"}

    run = tmp_path / "a" / UNET_RUN
    final = load_file(run / "checkpoint-000004" / UNET_WEIGHTS_FILE)
    # stopped after step 2, then run again: continues from the checkpoint
    for path in (run / "checkpoint-000004", tmp_path / "a" / "tinyemote-xl"):
        shutil.rmtree(path)
    again = pretrain_tiny_xl(small_build(tmp_path / "a"))
    assert again["unet_stage"]["resumed"] == [{"step": 2, "unet_steps": 4}]
    resumed = load_file(run / "checkpoint-000004" / UNET_WEIGHTS_FILE)
    assert final.keys() == resumed.keys()
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_a_checkpoint_interval_below_one_is_refused_before_any_stage(tmp_path):
    from stableemote_utils.errors import StableEmoteError

    config = small_build(tmp_path / "out")
    config.checkpoint_every = 0
    with pytest.raises(StableEmoteError, match="--checkpoint-every"):
        pretrain_tiny_xl(config)
    assert not (tmp_path / "out").exists()
