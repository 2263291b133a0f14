"""SDXL's conditioning as notebook 07 builds it: the notebook's code is the module's, and the
module computes what diffusers' pipeline and UNet compute (on ``tiny-xl-random``)."""

from __future__ import annotations

import pytest
import torch
from lesson_code import module_definition, notebook_definition

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.model_family import SDXL
from stableemote_utils.notebook import notebook_setup
from stableemote_utils.presets import SDXL_TWINS, get_preset, sdxl_twin
from stableemote_utils.sdxl_conditioning import (
    added_time_embedding,
    sdxl_prompt_embeds,
    sinusoidal_embedding,
    time_ids,
    timestep_and_added_embedding,
)

LESSON = (
    sdxl_prompt_embeds,
    time_ids,
    sinusoidal_embedding,
    added_time_embedding,
    timestep_and_added_embedding,
)


@pytest.mark.parametrize("function", LESSON, ids=[f.__name__ for f in LESSON])
def test_notebook_07_writes_the_module_definition(function):
    assert notebook_definition("07", function.__name__) == module_definition(function)


@pytest.fixture(scope="module")
def xl_pipe():
    return make_pipeline(load_components("tiny-xl-random"))


PROMPTS = ["An emoji of smiling cat", "An emoji of a red heart"]


def test_prompt_embeds_equal_the_pipeline(xl_pipe):
    with torch.no_grad():
        text, pooled = sdxl_prompt_embeds(
            (xl_pipe.tokenizer, xl_pipe.tokenizer_2),
            (xl_pipe.text_encoder, xl_pipe.text_encoder_2),
            PROMPTS,
        )
        theirs, _, theirs_pooled, _ = xl_pipe.encode_prompt(
            PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    assert text.shape[-1] == xl_pipe.unet.config.cross_attention_dim
    assert torch.equal(text, theirs) and torch.equal(pooled, theirs_pooled)
    # The training loop encodes with the same function.
    family = SDXL.encode_prompts(xl_pipe, PROMPTS)
    assert torch.equal(family["text"], text) and torch.equal(family["pooled"], pooled)


def test_time_ids_equal_the_pipeline(xl_pipe):
    ids = time_ids((72, 80), (8, 0), (64, 64))
    theirs = xl_pipe._get_add_time_ids(
        (72, 80),
        (8, 0),
        (64, 64),
        dtype=torch.float32,
        text_encoder_projection_dim=xl_pipe.text_encoder_2.config.projection_dim,
    )
    assert torch.equal(ids, theirs)


def test_sinusoidal_embedding_equals_the_unet_projection(xl_pipe):
    values = torch.tensor([0.0, 1.0, 8.0, 64.0, 999.0])
    unet = xl_pipe.unet
    assert torch.allclose(
        sinusoidal_embedding(values, unet.config.addition_time_embed_dim),
        unet.add_time_proj(values),
        atol=1e-6,
    )
    assert torch.allclose(
        sinusoidal_embedding(values, unet.config.block_out_channels[0]),
        unet.time_proj(values),
        atol=1e-6,
    )


def test_the_embedding_is_what_the_resnet_blocks_receive(xl_pipe):
    unet = xl_pipe.unet
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(2, xl_pipe.text_encoder_2.config.projection_dim, generator=g)
    ids = torch.cat([time_ids((64, 64), (0, 0), (64, 64)), time_ids((72, 72), (8, 8), (64, 64))])
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    t = torch.tensor([500, 20])
    caught = []
    hook = (
        unet.down_blocks[0]
        .resnets[0]
        .register_forward_pre_hook(lambda m, args: caught.append(args[1]))
    )
    try:
        with torch.no_grad():
            unet(latents, t, text, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})
            mine = timestep_and_added_embedding(unet, t, pooled, ids)
    finally:
        hook.remove()
    assert torch.allclose(caught[0], mine, atol=1e-5)
    # The two pictures' time ids differ, and so does what the UNet is told.
    with torch.no_grad():
        added = added_time_embedding(unet, pooled[:1].expand(2, -1), ids)
    assert not torch.allclose(added[0], added[1])


def test_each_sd15_preset_has_an_sdxl_twin():
    for sd15_name, xl_name in SDXL_TWINS.items():
        assert get_preset(sd15_name).family == "sd15"
        assert get_preset(xl_name).family == "sdxl"
        assert sdxl_twin(sd15_name) == xl_name
    assert sdxl_twin("tiny-xl") == "tiny-xl"  # already SDXL: unchanged


def test_notebook_07_turns_the_preset_into_its_twin(monkeypatch, capsys):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny-random")
    assert notebook_setup(family="sdxl").preset.name == "tiny-xl-random"
    assert "tiny-xl-random (STABLEEMOTE_PRESET)" in capsys.readouterr().out


def test_sdxl_without_a_gpu_stops_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("STABLEEMOTE_PRESET", "sd15")
    with pytest.raises(StableEmoteError) as err:
        notebook_setup(family="sdxl")
    message = str(err.value)
    assert message.startswith("The sdxl preset needs a GPU") and "\n" not in message
    assert "TinyEmote-XL" in message
    assert capsys.readouterr().out == ""


def test_added_time_embedding_follows_the_pooled_vector_to_its_device(xl_pipe):
    """Time ids are built on the CPU (``time_ids``) while the prompt is encoded on the
    accelerator: the embedding must land where the pooled vector is. The meta device stands
    in for a GPU here."""
    import copy

    unet = copy.deepcopy(xl_pipe.unet).to("meta")  # the shared pipeline keeps its weights
    pooled = torch.zeros(2, xl_pipe.text_encoder_2.config.projection_dim, device="meta")
    ids = time_ids((64, 64), (0, 0), (64, 64)).expand(2, -1)
    out = added_time_embedding(unet, pooled, ids)
    assert out.device.type == "meta" and out.shape[0] == 2
