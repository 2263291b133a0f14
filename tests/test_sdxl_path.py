"""The SDXL path on TinyEmote-XL's architecture with random weights (``tiny-xl-random``).

One training loop, cache, sampler and exporter for both families: these tests check what
the SDXL family does differently (two encoders, pooled text, time ids, SGM names in the
kohya export) against diffusers' own SDXL pipeline, and the one-line refusals.
"""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stableemote_utils import lora_files as LF
from stableemote_utils import lora_inspect as LI
from stableemote_utils.data import EmojiExample, load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.loading import load_components, make_pipeline
from stableemote_utils.lora_peft import load_lora, lora_loaded, unload_lora
from stableemote_utils.model_family import SD15, SDXL, family_of
from stableemote_utils.presets import get_preset
from stableemote_utils.sgm_names import sgm_layer_name
from stableemote_utils.tiny_model import sdxl_config
from stableemote_utils.training import train
from stableemote_utils.training_setup import resolve_run

# One worker runs the module: its trained adapter and pipeline are made once.
pytestmark = pytest.mark.xdist_group("sdxl-path")

XL = "tiny-xl-random"
# The SDXL runs here: tiny-xl-random, 16 pictures, 2 steps.
XL_RUN = {"preset": XL, "steps": 2, "caption_dropout": 0.5, "max_train_examples": 16}


@pytest.fixture(scope="module")
def xl_components():
    """tiny-xl-random on CPU in fp32 (shared: tests that add adapters remove them)."""
    return load_components(XL)


@pytest.fixture(scope="module")
def xl_pipe(xl_components):
    return make_pipeline(xl_components)


@pytest.fixture(scope="module")
def xl_run(tmp_path_factory, short_run):
    """A finished 2-step tiny-xl-random run (rank 4 on the attention projections)."""
    out = tmp_path_factory.mktemp("xl-run")
    result = train(short_run.config(out, **XL_RUN))
    return result


def test_sdxl_conditioning_equals_diffusers_pipeline(xl_components, xl_pipe):
    assert family_of(xl_components.unet) is SDXL and xl_pipe.__class__.__name__ == (
        "StableDiffusionXLPipeline"
    )
    prompts = ["An emoji of cat face", "An emoji of robot face"]
    ours = SDXL.encode_prompts(xl_components, prompts)
    text, negative, pooled, negative_pooled = xl_pipe.encode_prompt(
        prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    d1 = xl_components.text_encoder.config.hidden_size
    d2 = xl_components.text_encoder_2.config.hidden_size
    assert ours["text"].shape == (2, 77, d1 + d2) == text.shape
    assert ours["pooled"].shape == (2, xl_components.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(ours["text"], text, rtol=0, atol=0)
    torch.testing.assert_close(ours["pooled"], pooled, rtol=0, atol=0)
    # no negative prompt: SDXL's unconditional side is zeros (force_zeros_for_empty_prompt)
    embeds = SDXL.sampling_embeds({k: v[:1] for k, v in ours.items()}, {})
    assert torch.equal(embeds["negative_prompt_embeds"], negative[:1])
    assert torch.equal(embeds["negative_pooled_prompt_embeds"], negative_pooled[:1])
    assert not negative.any()
    # SD 1.5 reads the last layer after the final LayerNorm; SDXL the penultimate, without
    out = xl_components.text_encoder(
        xl_pipe.tokenizer(prompts, padding="max_length", return_tensors="pt").input_ids,
        output_hidden_states=True,
    )
    torch.testing.assert_close(ours["text"][..., :d1], out.hidden_states[-2], rtol=0, atol=0)
    assert not torch.allclose(ours["text"][..., :d1], out.last_hidden_state)


def test_time_ids_come_from_each_pictures_own_size(xl_pipe):
    px = get_preset(XL).resolution_px
    examples = load_emoji_dataset("noto", px, "{}", split="train", limit=2)
    assert all(e.original_size == (max(136, 128), max(136, 128)) for e in examples)
    small = EmojiExample("tiny", "tiny", examples[0].image, original_size=(40, 40))
    ids = SDXL.image_conditioning([*examples, small], px)["time_ids"]
    assert ids.shape == (3, 6)
    for row, original in zip(ids, [(136, 136), (136, 136), (40, 40)], strict=True):
        expected = xl_pipe._get_add_time_ids(
            original,
            (0, 0),
            (px, px),
            dtype=torch.float32,
            text_encoder_projection_dim=xl_pipe.text_encoder_2.config.projection_dim,
        )
        assert torch.equal(row, expected[0])
    assert SD15.image_conditioning(examples, px) == {}


def test_unet_inputs_carry_pooled_text_and_time_ids(xl_components):
    cond = {"text": torch.zeros(2, 77, 128), "pooled": torch.ones(2, 64)}
    cond["time_ids"] = torch.tensor([[136.0, 136, 0, 0, 64, 64]] * 2)
    inputs = SDXL.unet_inputs(cond)
    assert set(inputs) == {"encoder_hidden_states", "added_cond_kwargs"}
    assert set(inputs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    assert SD15.unet_inputs(cond) == {"encoder_hidden_states": cond["text"]}
    unet = xl_components.unet
    latents = torch.zeros(2, 4, 8, 8)
    with torch.no_grad():
        pred = unet(latents, torch.tensor([10, 10]), **inputs).sample
        cond["time_ids"][1, 0] = 40  # another original size changes the prediction
        other = unet(latents, torch.tensor([10, 10]), **SDXL.unet_inputs(cond)).sample
    assert torch.equal(pred[0], other[0]) and not torch.equal(pred[1], other[1])


def test_a_dropped_caption_is_what_each_familys_sampler_guides_against(
    xl_components, xl_pipe, tmp_path, short_run, monkeypatch
):
    empty = SDXL.encode_prompts(xl_components, [""])
    _, negative, _, negative_pooled = xl_pipe.encode_prompt(
        ["An emoji of cat face"], device="cpu", do_classifier_free_guidance=True
    )
    dropped = SDXL.dropped_caption(empty)
    assert empty["text"].abs().sum() > 0  # the encoded "" is not zeros: SDXL trains zeros
    assert torch.equal(dropped["text"], negative) and torch.equal(
        dropped["pooled"], negative_pooled
    )
    assert SD15.dropped_caption({"text": empty["text"]}) == {"text": empty["text"]}
    # in a training step with every caption dropped, the UNet is given SDXL's zeros
    seen, unet_inputs = [], SDXL.unet_inputs

    def record(cond):  # the training step's calls (the held-out loss keeps its captions)
        if sys._getframe(1).f_code.co_name == "optimizer_step":
            seen.append(cond)
        return unet_inputs(cond)

    monkeypatch.setattr(SDXL, "unet_inputs", record)
    run = {**XL_RUN, "steps": 1, "caption_dropout": 1.0, "max_train_examples": 4}
    train(short_run.config(tmp_path / "dropped", **run))
    assert seen and all(not c["text"].any() and not c["pooled"].any() for c in seen)


def test_train_resume_and_cache_on_tiny_xl(xl_run, tmp_path, short_run):
    assert xl_run.adapter_path is not None and len(xl_run.losses) == 2
    assert all(torch.isfinite(torch.tensor(xl_run.losses)))
    assert (xl_run.output_dir / "samples" / "step-000002.png").is_file()
    stopped = train(short_run.config(tmp_path, **XL_RUN, stop_after_steps=1))
    assert stopped.stopped_early
    resumed = train(short_run.config(tmp_path, **XL_RUN), resume="latest")
    assert resumed.losses == xl_run.losses
    a, b = load_file(xl_run.adapter_path), load_file(resumed.adapter_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = LI.inspect_lora(xl_run.adapter_path)
    assert info["family"] == "SDXL" and info["fits"]["tiny-xl"] is None
    assert info["fits"]["tiny"] is not None and info["fits"]["sd15"] is not None
    assert info["fits"]["tinyemote-xl"] is not None  # TinyEmote-XL's UNet is wider


def test_compare_draws_base_and_lora_on_tiny_xl(xl_run, xl_pipe):
    from stableemote_utils.compare import fair_comparison
    from stableemote_utils.sampling import SamplingSettings

    settings = SamplingSettings.for_preset(XL, prompts=["cat face"], seeds=[0], steps=2)
    made: list = []
    grid, record = fair_comparison(xl_pipe, xl_run.adapter_path, settings, images_out=made)
    assert [e["model"] for e in record["images"]] == ["base", "lora"]
    assert len(made) == 2 and made[0].size == (settings.resolution_px,) * 2
    assert made[0].tobytes() != made[1].tobytes()
    assert not getattr(xl_pipe.unet, "peft_config", None)  # removed again


def test_sgm_names_follow_sd_scripts_table():
    """Anchor pairs of sd-scripts' SDXL conversion table (library/sdxl_model_util.py)."""
    config = sdxl_config("unet")
    pairs = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
        ),
        "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0": (
            "input_blocks.8.1.transformer_blocks.9.attn2.to_out.0"
        ),
        "mid_block.attentions.0.transformer_blocks.3.attn1.to_k": (
            "middle_block.1.transformer_blocks.3.attn1.to_k"
        ),
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_v": (
            "output_blocks.2.1.transformer_blocks.0.attn2.to_v"
        ),
        "up_blocks.1.attentions.0.proj_in": "output_blocks.3.1.proj_in",
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.downsamplers.0.conv": "input_blocks.6.0.op",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "up_blocks.2.resnets.2.conv2": "output_blocks.8.0.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "conv_in": "input_blocks.0.0",
        "conv_out": "out.2",
        "time_embedding.linear_1": "time_embed.0",
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for diffusers_name, sgm in pairs.items():
        assert sgm_layer_name(diffusers_name, config) == sgm, diffusers_name
    # every layer of the real layout gets its own name, in blocks sd-scripts has
    layers = LF.target_layer_shapes(LI.layout_models("sdxl")["unet"])
    names = {sgm_layer_name(n, config) for n in layers}
    assert len(names) == len(layers)
    blocks = {".".join(n.split(".")[:2]) for n in names}
    assert blocks == {
        *(f"input_blocks.{i}" for i in (4, 5, 7, 8)),
        "middle_block.1",
        *(f"output_blocks.{i}" for i in range(6)),
    }


def test_export_round_trip_through_diffusers_sgm_loader(xl_run, xl_pipe, tmp_path):
    out = LI.export_kohya(xl_run.adapter_path, tmp_path / "emoji_xl.safetensors")
    with safe_open(str(out), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
    assert header["ss_base_model_version"] == "sdxl_base_v1-0"
    assert alphas == {float(xl_run_alpha(xl_run))}
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k[: -len(".alpha")] for k in keys}
    assert all(
        s.startswith("lora_unet_input_blocks_")
        or s.startswith(("lora_unet_middle_block_", "lora_unet_output_blocks_"))
        for s in stems
    )
    assert len(keys) == 3 * len(stems)

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = SDXL.unet_inputs(
        {
            "text": torch.randn(1, 77, 128, generator=torch.Generator().manual_seed(1)),
            "pooled": torch.randn(1, 64, generator=torch.Generator().manual_seed(2)),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    )

    def predict():
        with torch.no_grad():
            return xl_pipe.unet(latents, torch.tensor([500]), **cond).sample

    with lora_loaded(xl_pipe, xl_run.adapter_path):  # ours, from the peft-style file
        expected = predict()
    # diffusers' own loader maps the SGM names back (_maybe_map_sgm_blocks_to_diffusers)
    xl_pipe.load_lora_weights(str(out), adapter_name="kohya")
    try:
        from peft.utils import get_peft_model_state_dict

        loaded = get_peft_model_state_dict(xl_pipe.unet, adapter_name="kohya")
        trained = load_file(xl_run.adapter_path)
        assert {"unet." + k for k in loaded} == set(trained)  # every key matched
        torch.testing.assert_close(predict(), expected, rtol=1e-5, atol=1e-6)
    finally:
        unload_lora(xl_pipe)


def xl_run_alpha(result) -> float:
    _, metadata = LF.read_lora_file(result.adapter_path)
    return float(metadata["alpha"])


def test_other_familys_adapter_is_refused_in_one_line(xl_run, xl_pipe, tmp_path, short_run):
    sd15 = train(short_run.config(tmp_path / "sd15", steps=1, max_train_examples=16))
    with pytest.raises(StableEmoteError) as info:
        load_lora(xl_pipe, sd15.adapter_path)
    message = str(info.value)
    assert "is an SD 1.x adapter and this model is SDXL" in message and "\n" not in message
    sd_pipe = make_pipeline(load_components("tiny-random"))
    with pytest.raises(StableEmoteError, match="is an SDXL adapter and this model is SD 1.x"):
        load_lora(sd_pipe, xl_run.adapter_path)
    assert not getattr(xl_pipe.unet, "peft_config", None)


def test_sdxl_refuses_a_size_it_cannot_take(tmp_path, short_run):
    with pytest.raises(StableEmoteError, match="multiple of 32 px; use 64 or 96") as info:
        resolve_run(short_run.config(tmp_path, preset=XL, resolution_px=72))
    assert "\n" not in str(info.value)
    resolve_run(short_run.config(tmp_path, resolution_px=72))  # SD 1.x takes it


def test_sdxl_preset_without_a_gpu_is_refused_unless_cpu_is_asked_for(
    tmp_path, short_run, monkeypatch
):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = short_run.config(tmp_path, preset="sdxl", device=None, resolution_px=None)
    with pytest.raises(StableEmoteError, match="needs a CUDA GPU") as info:
        resolve_run(config)
    assert "\n" not in str(info.value)
    from stableemote_utils import training_setup

    monkeypatch.setattr(training_setup, "check_hub_model", lambda model: None)  # offline here
    plan = resolve_run(short_run.config(tmp_path, preset="sdxl", device="cpu"))
    assert plan.family is SDXL and plan.config.model == get_preset("sdxl").model


def test_demo_draws_with_an_sdxl_adapter(xl_run, xl_pipe):
    from stableemote_utils.cli.demo_generation import demo_generate
    from stableemote_utils.sampling import SamplingSettings

    settings = SamplingSettings.for_preset(XL, prompts=["cat face"], seeds=[1], steps=2)
    with lora_loaded(xl_pipe, xl_run.adapter_path, adapter_name="demo"):
        base, lora = demo_generate(xl_pipe, settings)
    assert base.size == lora.size == (settings.resolution_px,) * 2
    assert base.tobytes() != lora.tobytes()


def test_sdxl_layout_has_the_published_counts():
    """SDXL base 1.0's UNet (meta device, from the published config) and its rank-4 LoRA."""
    from stableemote_utils.lora import lora_parameter_count

    unet = LI.layout_models("sdxl")["unet"]
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert len(LF.target_layer_shapes(unet)) == 560
    assert lora_parameter_count(4, unet) == 5_806_080
    assert lora_parameter_count(4) == 797_184  # SD 1.5's, for scale


def test_an_adapter_on_layers_both_families_share_is_read_as_its_own(tmp_path, short_run):
    """tiny-quick's layers on TinyEmote-XL (the first and last blocks' ResNets) have the
    same names and shapes in the tiny SD 1.5 model; the header's family decides."""
    from stableemote_utils.training_config import TINY_QUICK_TARGETS

    run = train(short_run.config(tmp_path, **XL_RUN, target_modules=TINY_QUICK_TARGETS))
    _, metadata = LF.read_lora_file(run.adapter_path)
    assert metadata["model_family"] == "sdxl"
    info = LI.inspect_lora(run.adapter_path)
    assert info["fits"]["tiny"] is None and info["fits"]["tiny-xl"] is None
    assert info["family"] == "SDXL"
    out = LI.export_kohya(run.adapter_path, tmp_path / "k.safetensors")
    keys = set(load_file(out))
    assert "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight" in keys
    assert not any("down_blocks" in k or "up_blocks" in k for k in keys)


def test_each_part_leaves_the_cpu_before_the_next_loads(monkeypatch):
    """On a GPU the CPU holds one part at a time (Colab has ~12 GB): every part is on the
    target device before the UNet, the largest, is read. The meta device stands in for
    the GPU."""
    import diffusers
    import transformers

    from stableemote_utils import loading

    loaded, seen = [], {}

    def recording(cls):
        original = cls.from_pretrained

        def load(*args, **kwargs):
            module = original(*args, **kwargs)
            loaded.append((cls.__name__, module))
            return module

        monkeypatch.setattr(cls, "from_pretrained", load)

    for cls in (
        transformers.CLIPTextModel,
        transformers.CLIPTextModelWithProjection,
        diffusers.AutoencoderKL,
    ):
        recording(cls)
    unet_from_pretrained = diffusers.UNet2DConditionModel.from_pretrained

    def unet_load(*args, **kwargs):
        seen.update({name: next(m.parameters()).device.type for name, m in loaded})
        return unet_from_pretrained(*args, **kwargs)

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", unet_load)
    components = loading.load_components(XL, device="meta")
    assert seen == {
        "CLIPTextModel": "meta",
        "CLIPTextModelWithProjection": "meta",
        "AutoencoderKL": "meta",
    }
    assert next(components.unet.parameters()).device.type == "meta"


def test_tiny_xl_quick_puts_tiny_quicks_lora_where_sdxls_attention_is(xl_components):
    """In SDXL's layout the full-resolution blocks hold no attention: tiny-quick's layers
    there are ResNet layers only; tiny-xl-quick takes the attention projections instead."""
    from stableemote_utils.lora_files import target_layer_shapes
    from stableemote_utils.training_config import LORA_TARGET_MODULES, recipe

    quick, xl_quick = recipe("tiny-quick"), recipe("tiny-xl-quick")
    assert xl_quick.preset == "tiny-xl" and xl_quick.target_modules == LORA_TARGET_MODULES
    same = {"steps", "batch_size", "learning_rate", "rank", "lr_warmup_steps"}
    assert all(getattr(quick, f) == getattr(xl_quick, f) for f in same)
    unet = xl_components.unet
    resnets_only = target_layer_shapes(unet, quick.target_modules)
    assert resnets_only and not any(".attentions." in name for name in resnets_only)
    attention = target_layer_shapes(unet, xl_quick.target_modules)
    assert attention and all(".attentions." in name for name in attention)
