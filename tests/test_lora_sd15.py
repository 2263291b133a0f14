"""LoRA on the full-size SD 1.5 architecture (random weights, CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stableemote_utils import lora as L
from stableemote_utils import lora_files as LF
from stableemote_utils import lora_inspect as LI
from stableemote_utils.errors import StableEmoteError

pytestmark = pytest.mark.slow

SD15_RANK4_PARAMETERS = 797_184  # published count for rank 4 on to_q/to_k/to_v/to_out.0
SD15_RANK4_TENSORS = 256


@pytest.fixture(scope="module")
def sd15_pipe(tiny_model_dir):
    """One full-size SD 1.5 pipeline with random weights, shared by this module's tests."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from stableemote_utils.tiny_model import build_sd15_components, sd15_config

    unet, vae, text_encoder = build_sd15_components(seed=0)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer"),
        unet=unet,
        scheduler=PNDMScheduler.from_config(sd15_config("scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def run_unet(unet, seed: int = 1) -> torch.Tensor:
    """One UNet forward on an 8x8 latent (1, 4, 8, 8) with 77 text states."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), text).sample


def test_meta_layout_counts_match_the_published_numbers():
    assert L.lora_parameter_count(4) == SD15_RANK4_PARAMETERS
    (row,) = L.lora_size_table(ranks=(4,))
    assert row["tensors"] == SD15_RANK4_TENSORS
    assert row["file_bytes"] > 4 * SD15_RANK4_PARAMETERS


def test_full_size_adapter_save_load_unload(sd15_pipe, tmp_path):
    unet = sd15_pipe.unet
    base = run_unet(unet)

    torch.manual_seed(0)
    assert L.add_lora(unet, rank=4) == SD15_RANK4_PARAMETERS
    state = LF.lora_state_dict(unet)
    assert len(state) == SD15_RANK4_TENSORS
    assert sum(v.numel() for v in state.values()) == SD15_RANK4_PARAMETERS
    g = torch.Generator().manual_seed(3)
    trained = {
        k: (torch.randn(v.shape, generator=g) * 0.05 if "lora_B" in k else v)
        for k, v in state.items()
    }
    L.set_lora_state_dict(unet, trained)
    with_lora = run_unet(unet)
    file = LF.save_lora(unet, tmp_path, {"base_model": "sd15-random"})
    unet.delete_adapters("default")
    assert torch.equal(run_unet(unet), base)

    with safe_open(str(file), framework="pt") as f:
        assert set(f.keys()) == set(state)
    info = LI.inspect_lora(file)
    assert info["fits"]["sd15"] is None and info["fits"]["tiny"] is not None
    assert info["parameters"] == SD15_RANK4_PARAMETERS

    L.load_lora(sd15_pipe, file)
    loaded = LF.lora_state_dict(unet)
    assert loaded.keys() == trained.keys()  # no missing or unexpected keys
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    after = run_unet(unet)
    assert (after - base).abs().max() > 1e-3
    torch.testing.assert_close(after, with_lora, rtol=1e-4, atol=1e-5)

    L.unload_lora(sd15_pipe)
    assert torch.equal(run_unet(unet), base)


def test_full_size_kohya_export_round_trip(sd15_pipe, tmp_path):
    unet = sd15_pipe.unet
    torch.manual_seed(1)
    L.add_lora(unet, rank=2, alpha=1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    with_lora = run_unet(unet)
    file = LF.save_lora(unet, tmp_path / "peft")
    unet.delete_adapters("default")
    out = LI.export_kohya(file, tmp_path / "emoji.safetensors")
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
    assert len(keys) == 3 * SD15_RANK4_TENSORS // 2
    assert (
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k.lora_down.weight"
        in keys
    )
    L.load_lora(sd15_pipe, out)
    torch.testing.assert_close(run_unet(unet), with_lora, rtol=1e-4, atol=1e-5)
    L.unload_lora(sd15_pipe)


def test_sdxl_adapter_partly_matches_sd15_and_is_refused(sd15_pipe, tmp_path):
    from test_lora import sdxl_like_lora_state_dict

    state = sdxl_like_lora_state_dict()
    file = tmp_path / "sdxl.safetensors"
    save_file(state, str(file))
    with pytest.raises(StableEmoteError) as info:
        L.load_lora(sd15_pipe, file)
    assert "is an SDXL adapter and this model is SD 1.x" in str(info.value)
    message = str(info.value.__cause__)  # the fit check under the one line
    assert str(file) in message
    matched = int(message.split("fit this model: ")[1].split(" of ")[0])
    assert 0 < matched < len(state)  # some SDXL layer names and shapes exist in SD 1.5
    assert f"{matched} of {len(state)} keys matched and {len(state) - matched} did not" in message
    assert not getattr(sd15_pipe.unet, "peft_config", None)
