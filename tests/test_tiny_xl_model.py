"""TinyEmote-XL's architecture: SDXL's layout at toy size, loadable by diffusers' SDXL pipeline."""

import json

import pytest
import torch

from stableemote_utils.presets import get_preset
from stableemote_utils.tiny_model import build_tiny_xl_model, ensure_tiny_xl_model


@pytest.fixture(scope="module")
def tiny_xl_dir():
    return ensure_tiny_xl_model(get_preset("tiny-xl-random").model)


@pytest.fixture(scope="module")
def tiny_xl_pipe(tiny_xl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_xl_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_has_sdxl_layout(tiny_xl_dir):
    index = json.loads((tiny_xl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert index["force_zeros_for_empty_prompt"] is True
    assert not list(tiny_xl_dir.rglob("*.bin")), "weights must be safetensors only"


def test_unet_reads_both_encoders_and_the_time_ids(tiny_xl_pipe):
    unet, te1, te2 = tiny_xl_pipe.unet, tiny_xl_pipe.text_encoder, tiny_xl_pipe.text_encoder_2
    c = unet.config
    assert c.addition_embed_type == "text_time"
    assert c.cross_attention_dim == te1.config.hidden_size + te2.config.hidden_size
    assert c.projection_class_embeddings_input_dim == (
        6 * c.addition_time_embed_dim + te2.config.projection_dim
    )
    # SDXL's layout: no attention at the highest resolution, deeper levels deeper
    assert c.down_block_types[0] == "DownBlock2D" and c.up_block_types[-1] == "UpBlock2D"
    depths = [len(b.attentions[0].transformer_blocks) for b in unet.down_blocks[1:]]
    assert depths == sorted(depths) and depths[0] < depths[-1]
    assert len(unet.mid_block.attentions[0].transformer_blocks) == depths[-1]


def test_scheduler_and_vae_are_sdxls(tiny_xl_pipe):
    s = tiny_xl_pipe.scheduler.config
    assert type(tiny_xl_pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (s.beta_start, s.beta_end, s.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert (s.num_train_timesteps, s.timestep_spacing, s.steps_offset) == (1000, "leading", 1)
    assert tiny_xl_pipe.vae.config.scaling_factor == 0.13025


def test_sdxl_pipeline_draws_at_the_presets_size(tiny_xl_pipe):
    px = get_preset("tiny-xl-random").resolution_px
    out = tiny_xl_pipe(
        "An emoji of cat face",
        num_inference_steps=2,
        height=px,
        width=px,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, px, px, 3)
    assert torch.isfinite(torch.from_numpy(out)).all()


def test_build_is_seeded_and_leaves_the_global_generator_alone(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_xl_model(tmp_path / "a")
    assert torch.equal(torch.rand(3), expected)
    b = build_tiny_xl_model(tmp_path / "b")
    c = build_tiny_xl_model(tmp_path / "c", seed=1)
    part = "unet/diffusion_pytorch_model.safetensors"
    wa, wb, wc = (load_file(m / part) for m in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_load_pipeline_gives_sdxls_pipeline_for_the_tiny_xl_preset(tiny_xl_dir):
    from stableemote_utils.loading import load_pipeline

    pipe = load_pipeline("tiny-xl-random")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.name_or_path == str(tiny_xl_dir)
    assert type(load_pipeline("tiny-random")).__name__ == "StableDiffusionPipeline"
