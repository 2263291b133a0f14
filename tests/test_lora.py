"""LoRA helpers on the tiny model: add, save, load, fit checks, key styles, export, sizes."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stableemote_utils import figures
from stableemote_utils import lora as L
from stableemote_utils import lora_files as LF
from stableemote_utils import lora_inspect as LI
from stableemote_utils.errors import StableEmoteError, WriteFailedError
from stableemote_utils.loading import make_pipeline


def fresh_pipe(components, dtype: torch.dtype | None = None):
    """A tiny pipeline with its own copy of the UNet (tests may change it).

    The text encoder and VAE are shared and must stay unchanged.
    """
    unet = copy.deepcopy(components.unet)
    if dtype is not None:
        unet = unet.to(dtype)
    return make_pipeline(dataclasses.replace(components, unet=unet))


@pytest.fixture
def pipe(tiny_components):
    return fresh_pipe(tiny_components)


def unet_inputs(unet, seed: int = 1):
    """Small fixed inputs: latents (1, C, S, S), a timestep, text states (1, 77, D)."""
    g = torch.Generator().manual_seed(seed)
    c, s = unet.config.in_channels, unet.config.sample_size
    latents = torch.randn(1, c, s, s, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor([500]), text


def run_unet(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs).sample


def randomise_b(unet, seed: int = 2, std: float = 0.2) -> None:
    """Give every LoRA B a random value, as training would, so the adapter acts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def trained(pipe, tmp_path):
    """A tiny UNet with a rank-4, alpha-2 adapter with non-zero B, saved to a folder.

    Returns (pipe, file, reference output with the adapter, base output, inputs).
    """
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    torch.manual_seed(0)
    L.add_lora(pipe.unet, rank=4, alpha=2)
    randomise_b(pipe.unet)
    with_lora = run_unet(pipe.unet, inputs)
    file = LF.save_lora(pipe.unet, tmp_path / "adapter", {"base_model": "tiny"})
    return pipe, file, with_lora, base, inputs


# --- add_lora ---------------------------------------------------------------------------


def test_add_lora_counts_marks_trainable_and_starts_at_identity(pipe):
    unet = pipe.unet
    shapes = LF.target_layer_shapes(unet)
    assert {
        name.rsplit(".", 2)[-2] if name.endswith(".0") else name.rsplit(".", 1)[-1]
        for name in shapes
    } == {"to_q", "to_k", "to_v", "to_out"}
    expected = sum(4 * (d_out + d_in) for d_out, d_in in shapes.values())
    inputs = unet_inputs(unet)
    before = run_unet(unet, inputs)

    n = L.add_lora(unet, rank=4)

    assert n == expected
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in t or ".lora_B." in t for t in trainable)
    assert sum(p.numel() for p in unet.parameters() if p.requires_grad) == n
    lora_b = [p for name, p in unet.named_parameters() if ".lora_B." in name]
    assert len(lora_b) == len(shapes) and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert torch.equal(run_unet(unet, inputs), before)
    randomise_b(unet)
    assert not torch.allclose(run_unet(unet, inputs), before, atol=1e-4)


def test_add_lora_is_deterministic_given_the_seed(tiny_components):
    states = []
    for _ in range(2):
        unet = fresh_pipe(tiny_components).unet
        torch.manual_seed(123)
        L.add_lora(unet, rank=2)
        states.append(LF.lora_state_dict(unet))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(torch.count_nonzero(v) > 0 for k, v in states[0].items() if "lora_A" in k)


def test_add_lora_keeps_lora_weights_fp32_in_a_half_precision_unet(tiny_components):
    unet = fresh_pipe(tiny_components, torch.float16).unet
    L.add_lora(unet, rank=4)
    for name, p in unet.named_parameters():
        if ".lora_" in name:
            assert p.dtype == torch.float32 and p.requires_grad
        else:
            assert p.dtype == torch.float16 and not p.requires_grad


def test_add_lora_alpha_scales_the_update(tiny_components):
    # (alpha / r) B A with alpha = 8, r = 4 equals (4 / 4) (2 B) A.
    outputs = {}
    for alpha, b_scale in ((8, 1.0), (4, 2.0)):
        unet = fresh_pipe(tiny_components).unet
        torch.manual_seed(0)
        L.add_lora(unet, rank=4, alpha=alpha)
        randomise_b(unet, std=0.1 * b_scale)
        outputs[alpha] = run_unet(unet, unet_inputs(unet))
    torch.testing.assert_close(outputs[8], outputs[4], rtol=1e-5, atol=1e-5)
    base = run_unet(fresh_pipe(tiny_components).unet, unet_inputs(unet))
    assert (outputs[8] - base).abs().max() > 1e-3


def test_add_lora_rejects_bad_arguments(pipe):
    with pytest.raises(StableEmoteError, match="rank must be a positive"):
        L.add_lora(pipe.unet, rank=0)
    with pytest.raises(StableEmoteError, match="No layer of the UNet matched"):
        L.add_lora(pipe.unet, target_modules=("not_a_layer",))


# --- state dicts ------------------------------------------------------------------------


def test_lora_state_dict_uses_the_pipeline_key_format(pipe):
    n = L.add_lora(pipe.unet, rank=4)
    state = LF.lora_state_dict(pipe.unet)
    n_layers = len(LF.target_layer_shapes(pipe.unet))
    assert len(state) == 2 * n_layers
    assert sum(v.numel() for v in state.values()) == n
    assert all(k.startswith("unet.") for k in state)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    assert all(v.device.type == "cpu" and not v.requires_grad for v in state.values())
    # Copies, not views: changing the dict leaves the UNet alone.
    key = next(k for k in state if "lora_A" in k)
    state[key].zero_()
    assert torch.count_nonzero(LF.lora_state_dict(pipe.unet)[key]) > 0


def test_lora_state_dict_without_adapter_fails(pipe):
    with pytest.raises(StableEmoteError, match="no LoRA adapter named 'default'"):
        LF.lora_state_dict(pipe.unet)


def test_set_lora_state_dict_restores_outputs(trained, tiny_components):
    pipe, _, with_lora, _, inputs = trained
    state = LF.lora_state_dict(pipe.unet)
    other = fresh_pipe(tiny_components).unet
    torch.manual_seed(99)
    L.add_lora(other, rank=4, alpha=2)
    assert not torch.allclose(run_unet(other, inputs), with_lora)
    L.set_lora_state_dict(other, state)
    assert torch.equal(run_unet(other, inputs), with_lora)


def test_set_lora_state_dict_is_strict(trained, tiny_components):
    pipe, *_ = trained
    state = LF.lora_state_dict(pipe.unet)
    first = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != first}
    with pytest.raises(StableEmoteError, match=r"1 missing .*" + first.replace(".", r"\.")):
        L.set_lora_state_dict(pipe.unet, missing)
    with pytest.raises(StableEmoteError, match="1 unexpected"):
        L.set_lora_state_dict(pipe.unet, {**state, "unet.extra.lora_A.weight": state[first]})
    rank8 = fresh_pipe(tiny_components).unet
    L.add_lora(rank8, rank=8)
    with pytest.raises(StableEmoteError, match=r"with another shape .*\(4, .*\) vs \(8, "):
        L.set_lora_state_dict(rank8, state)
    bare = fresh_pipe(tiny_components).unet
    with pytest.raises(StableEmoteError, match="no LoRA adapter named"):
        L.set_lora_state_dict(bare, state)


# --- save / load ------------------------------------------------------------------------


def test_save_lora_writes_the_file_and_its_metadata(trained):
    pipe, file, *_ = trained
    assert file.name == "pytorch_lora_weights.safetensors"
    assert [p.name for p in file.parent.iterdir()] == [file.name]  # no temporary left over
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert keys == set(LF.lora_state_dict(pipe.unet))
    assert meta["rank"] == "4" and float(meta["alpha"]) == 2.0 and meta["base_model"] == "tiny"
    assert set(meta["target_modules"].split(",")) == set(LF.LORA_TARGET_MODULES)
    config = json.loads(meta[LF.DIFFUSERS_METADATA_KEY])
    assert config["unet.r"] == 4 and config["unet.lora_alpha"] == 2


def test_save_lora_writes_what_diffusers_save_lora_weights_writes_plus_our_header(
    trained, tmp_path
):
    """Why save_lora is ours and not StableDiffusionPipeline.save_lora_weights.

    The tensors and diffusers' adapter-config entry are the same, and diffusers' own
    reader gives the same state dict for both files; but diffusers' writer cannot add
    header entries (rank, alpha, base model, the training resolution compare reads) and
    writes in place, so an interrupted save leaves a half-written adapter.
    """
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    pipe, ours, *_ = trained
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "diffusers",
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
    )
    theirs = tmp_path / "diffusers" / LF.LORA_WEIGHT_NAME
    ours_state, ours_meta = LF.read_lora_file(ours)
    theirs_state, theirs_meta = LF.read_lora_file(theirs)
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        assert torch.equal(ours_state[key], theirs_state[key])

    def config(meta):  # a set is written as a list in no fixed order
        entries = json.loads(meta[LF.DIFFUSERS_METADATA_KEY]).items()
        return {k: sorted(v) if isinstance(v, list) else v for k, v in entries}

    assert config(ours_meta) == config(theirs_meta)
    read_ours = StableDiffusionPipeline.lora_state_dict(str(ours.parent))[0]
    read_theirs = StableDiffusionPipeline.lora_state_dict(str(theirs.parent))[0]
    assert read_ours.keys() == read_theirs.keys()
    assert all(torch.equal(read_ours[k], read_theirs[k]) for k in read_ours)
    assert {"rank", "alpha", "base_model"} <= ours_meta.keys()
    assert not {"rank", "alpha", "base_model"} & theirs_meta.keys()


def test_save_lora_never_leaves_a_half_written_file(trained, monkeypatch):
    pipe, file, *_ = trained
    before = file.read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    randomise_b(pipe.unet, seed=7)
    # Reported as a write failure (one line on the command line), naming the file.
    with pytest.raises(WriteFailedError, match=f"disk full.*{file.name}|{file.name}.*disk full"):
        LF.save_lora(pipe.unet, file.parent)
    assert file.read_bytes() == before
    assert [p.name for p in file.parent.iterdir()] == [file.name]


def test_save_lora_rejects_non_string_metadata(trained, tmp_path):
    pipe, *_ = trained
    with pytest.raises(StableEmoteError, match="strings"):
        LF.save_lora(pipe.unet, tmp_path / "x", {"steps": 100})


def test_load_lora_round_trip_scale_and_unload(trained, tiny_components):
    _, file, with_lora, base, inputs = trained
    pipe = fresh_pipe(tiny_components)
    assert torch.equal(run_unet(pipe.unet, inputs), base)
    L.load_lora(pipe, file.parent)  # the folder works as well as the file
    torch.testing.assert_close(run_unet(pipe.unet, inputs), with_lora, rtol=1e-5, atol=1e-6)
    L.set_lora_scale(pipe, 0.0)
    torch.testing.assert_close(run_unet(pipe.unet, inputs), base, rtol=1e-5, atol=1e-6)
    L.set_lora_scale(pipe, 0.5)
    half = run_unet(pipe.unet, inputs)
    assert (half - base).abs().max() > 1e-4 and (half - with_lora).abs().max() > 1e-4
    with pytest.raises(StableEmoteError, match="already has an adapter named 'default'"):
        L.load_lora(pipe, file)
    L.unload_lora(pipe)
    assert torch.equal(run_unet(pipe.unet, inputs), base)


def test_load_lora_scale_argument(trained, tiny_components):
    _, file, _, base, inputs = trained
    pipe = fresh_pipe(tiny_components)
    L.load_lora(pipe, file, adapter_name="emoji", scale=0.0)
    torch.testing.assert_close(run_unet(pipe.unet, inputs), base, rtol=1e-5, atol=1e-6)


def test_fuse_and_unfuse(trained, tiny_components):
    _, file, with_lora, base, inputs = trained
    pipe = fresh_pipe(tiny_components)
    L.load_lora(pipe, file)
    L.fuse_lora(pipe)
    torch.testing.assert_close(run_unet(pipe.unet, inputs), with_lora, rtol=1e-4, atol=1e-5)
    L.unfuse_lora(pipe)
    L.set_lora_scale(pipe, 0.0)
    torch.testing.assert_close(run_unet(pipe.unet, inputs), base, rtol=1e-4, atol=1e-5)


# --- key styles and precisions ----------------------------------------------------------


def _restyle(state: dict[str, torch.Tensor], style: str) -> dict[str, torch.Tensor]:
    if style == "peft":
        return dict(state)
    if style == "peft-no-prefix":
        return {k.removeprefix("unet."): v for k, v in state.items()}
    if style == "diffusers-old":
        return {
            k.replace(".lora_A.weight", ".lora.down.weight").replace(
                ".lora_B.weight", ".lora.up.weight"
            ): v
            for k, v in state.items()
        }
    raise ValueError(style)


@pytest.mark.parametrize("style", ["peft", "peft-no-prefix", "diffusers-old"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_load_lora_reads_both_key_styles_in_any_precision(
    trained, tiny_components, tmp_path, style, dtype
):
    src, _, _, base, inputs = trained
    peft_state = LF.lora_state_dict(src.unet)
    # A file without StableEmote's header, as published elsewhere: alpha = rank.
    file = tmp_path / "published.safetensors"
    save_file({k: v.to(dtype) for k, v in _restyle(peft_state, style).items()}, str(file))
    reference = fresh_pipe(tiny_components).unet
    L.add_lora(reference, rank=4)  # alpha = rank, like the file
    L.set_lora_state_dict(reference, {k: v.to(dtype).float() for k, v in peft_state.items()})
    expected = run_unet(reference, inputs)

    pipe = fresh_pipe(tiny_components)
    L.load_lora(pipe, file)
    got = run_unet(pipe.unet, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - base).abs().max() > 1e-3


# --- adapters that do not fit -----------------------------------------------------------


def _expect_refused(pipe, file, inputs, base, *patterns):
    with pytest.raises(StableEmoteError) as info:
        L.load_lora(pipe, file)
    message = str(info.value)
    assert str(file) in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    # Nothing was half-loaded.
    assert not getattr(pipe.unet, "peft_config", None)
    assert torch.equal(run_unet(pipe.unet, inputs), base)
    return message


def test_refuses_an_sdxl_adapter(pipe, tmp_path):
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    state = sdxl_like_lora_state_dict()
    file = tmp_path / "sdxl.safetensors"
    save_file(state, str(file))
    # It fits SDXL's layout, so the one line names both families rather than counting keys.
    message = _expect_refused(
        pipe, file, inputs, base, "is an SDXL adapter and this model is SD 1.x"
    )
    assert "\n" not in message and "--preset sdxl or tiny-xl" in message


def test_refuses_an_adapter_whose_ranks_disagree(trained, tiny_components, tmp_path):
    src, *_ = trained
    pipe = fresh_pipe(tiny_components)
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    state = LF.lora_state_dict(src.unet)
    key_b = sorted(k for k in state if "lora_B" in k)[0]
    state[key_b] = torch.zeros(state[key_b].shape[0], 8)
    file = tmp_path / "ranks.safetensors"
    save_file(state, str(file))
    message = _expect_refused(
        pipe, file, inputs, base, f"{len(state) - 2} of {len(state)} keys matched", "2 did not"
    )
    assert "rank 4 in lora_A/down but 8 in lora_B/up" in message
    assert "damaged or was edited" in message and "another architecture" not in message


def test_refuses_an_adapter_with_extra_layers_and_says_so(trained, tiny_components, tmp_path):
    src, *_ = trained
    pipe = fresh_pipe(tiny_components)
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    state = LF.lora_state_dict(src.unet)
    extra_layer = "unet.mid_block.attentions.5.transformer_blocks.0.attn1.to_q"
    state[f"{extra_layer}.lora_A.weight"] = torch.zeros(4, 64)
    state[f"{extra_layer}.lora_B.weight"] = torch.zeros(64, 4)
    file = tmp_path / "extra.safetensors"
    save_file(state, str(file))
    message = _expect_refused(
        pipe, file, inputs, base, f"{len(state) - 2} of {len(state)} keys matched", "2 did not"
    )
    assert "no layer 'mid_block.attentions.5" in message
    assert "more layers than this one" in message and "another architecture" not in message


def test_refuses_an_adapter_with_another_layer_size(pipe, tmp_path):
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    name, (d_out, d_in) = next(iter(LF.target_layer_shapes(pipe.unet).items()))
    state = {
        f"unet.{name}.lora_A.weight": torch.zeros(4, d_in + 1),
        f"unet.{name}.lora_B.weight": torch.zeros(d_out, 4),
    }
    file = tmp_path / "wide.safetensors"
    save_file(state, str(file))
    message = _expect_refused(pipe, file, inputs, base, "0 of 2 keys matched", f"{d_in} inputs")
    assert "another architecture" in message


def test_refuses_a_text_encoder_only_adapter(pipe, tmp_path):
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    name, q_proj = next(
        (n, m) for n, m in pipe.text_encoder.named_modules() if n.endswith("q_proj")
    )
    stem = "text_encoder.text_model." + name.removeprefix("text_model.")
    state = {
        f"{stem}.lora_A.weight": torch.zeros(4, q_proj.in_features),
        f"{stem}.lora_B.weight": torch.zeros(q_proj.out_features, 4),
    }
    file = tmp_path / "te.safetensors"
    save_file(state, str(file))
    _expect_refused(pipe, file, inputs, base, "no UNet LoRA weights", "text-encoder-only")


def test_refuses_a_file_with_no_lora_keys(pipe, tmp_path):
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    file = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2), "conv_in.bias": torch.zeros(2)}, str(file))
    _expect_refused(pipe, file, inputs, base, "no LoRA weights", "0 of 2 keys", "conv_in")
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    _expect_refused(pipe, empty, inputs, base, "no LoRA weights", "0 of 0 keys")


def test_refuses_a_file_that_is_not_safetensors(trained, tiny_components, tmp_path):
    src, *_ = trained
    pipe = fresh_pipe(tiny_components)
    inputs = unet_inputs(pipe.unet)
    base = run_unet(pipe.unet, inputs)
    pickled = tmp_path / "adapter.safetensors"
    torch.save(LF.lora_state_dict(src.unet), pickled)
    _expect_refused(pipe, pickled, inputs, base, "is not a safetensors file")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    _expect_refused(pipe, text, inputs, base, "is not a safetensors file")


def test_refuses_missing_files_and_ambiguous_folders(pipe, tmp_path):
    with pytest.raises(StableEmoteError, match="does not exist"):
        L.load_lora(pipe, tmp_path / "nope.safetensors")
    for name in ("a.safetensors", "b.safetensors"):
        save_file({}, str(tmp_path / name))
    with pytest.raises(StableEmoteError, match="2 .safetensors files"):
        L.load_lora(pipe, tmp_path)


# --- kohya export -----------------------------------------------------------------------


def test_export_kohya_round_trip(trained, tiny_components, tmp_path):
    src, file, with_lora, _, inputs = trained
    out = LI.export_kohya(file, tmp_path / "emoji_kohya.safetensors")
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
        meta = f.metadata()
    layers = LF.target_layer_shapes(src.unet)
    assert len(keys) == 3 * len(layers)
    expected_stems = {"lora_unet_" + name.replace(".", "_") for name in layers}
    assert {
        k.rsplit(".", 2)[0] if not k.endswith(".alpha") else k[: -len(".alpha")] for k in keys
    } == expected_stems
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha" in keys
    assert all(float(a) == 2.0 and a.ndim == 0 for a in alphas.values())
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 2.0

    # Back into diffusers, both through our checked loader and diffusers' own.
    ours = fresh_pipe(tiny_components)
    L.load_lora(ours, out)
    torch.testing.assert_close(run_unet(ours.unet, inputs), with_lora, rtol=1e-5, atol=1e-6)
    theirs = fresh_pipe(tiny_components)
    theirs.load_lora_weights(str(out.parent), weight_name=out.name)
    torch.testing.assert_close(run_unet(theirs.unet, inputs), with_lora, rtol=1e-5, atol=1e-6)


def test_export_kohya_fp16_and_bad_targets(trained, tmp_path):
    _, file, *_ = trained
    full = LI.export_kohya(file, tmp_path / "a.safetensors")
    half = LI.export_kohya(file, tmp_path / "b.safetensors", dtype=torch.float16)
    n_weights = LI.inspect_lora(file)["parameters"]
    # Same header, weights at 2 bytes instead of 4 (the 0-dim alphas stay fp32).
    assert abs((full.stat().st_size - half.stat().st_size) - 2 * n_weights) < 1000
    assert LI.inspect_lora(half)["dtypes"] == ["float16", "float32"]  # weights, alphas
    with pytest.raises(StableEmoteError, match="must end in .safetensors"):
        LI.export_kohya(file, tmp_path / "out.ckpt")
    with pytest.raises(StableEmoteError, match="is the input file"):
        LI.export_kohya(file, file)


def test_export_kohya_refuses_an_adapter_that_fits_no_known_layout(tmp_path):
    file = tmp_path / "odd.safetensors"
    # SDXL's layer names with matrices of another width: no layout has such layers.
    state = {
        k: torch.zeros(v.shape[0] + 1, v.shape[1] + 1)
        for k, v in sdxl_like_lora_state_dict().items()
    }
    save_file(state, str(file))
    with pytest.raises(StableEmoteError, match="Only adapters for the SD 1.x or SDXL UNet"):
        LI.export_kohya(file, tmp_path / "out.safetensors")


# --- inspection and sizes ---------------------------------------------------------------


def test_inspect_lora_describes_the_file(trained):
    src, file, *_ = trained
    info = LI.inspect_lora(file)
    assert info["ranks"] == [4] and info["alphas"] == [2.0]
    assert info["target_modules"] == sorted(LF.LORA_TARGET_MODULES)
    assert info["parameters"] == sum(v.numel() for v in LF.lora_state_dict(src.unet).values())
    assert info["dtypes"] == ["float32"] and info["style"] == "peft"
    assert info["fits"]["tiny"] is None
    assert "0 of" in info["fits"]["sd15"]
    assert info["metadata"]["base_model"] == "tiny"
    assert info["file_bytes"] == file.stat().st_size


def test_parameter_count_and_size_table_match_a_real_adapter(trained, tmp_path):
    src, file, *_ = trained
    state = LF.lora_state_dict(src.unet)
    count = L.lora_parameter_count(4, unet=src.unet)
    assert count == sum(v.numel() for v in state.values())
    (row,) = L.lora_size_table(ranks=(4,), unet=src.unet)
    assert row["parameters"] == count and row["tensors"] == len(state)
    plain = LF.save_state_dict_atomic(state, tmp_path / "plain.safetensors", {})
    assert row["file_bytes"] == plain.stat().st_size
    rows = L.lora_size_table(ranks=(1, 2, 8), unet=src.unet)
    assert [r["parameters"] for r in rows] == [count // 4, count // 2, count * 2]


def test_parameter_count_covers_feed_forward_and_conv_layers(tiny_components):
    targets = ("to_q", "ff.net.2", "conv1")
    unet = copy.deepcopy(tiny_components.unet)
    assert L.add_lora(unet, rank=3, target_modules=targets) == L.lora_parameter_count(
        3, unet=tiny_components.unet, target_modules=targets
    )
    (row,) = L.lora_size_table(ranks=(3,), unet=tiny_components.unet, target_modules=targets)
    assert row["tensors"] == len(LF.lora_state_dict(unet))


def test_layout_models_are_on_the_meta_device():
    tiny = LI.layout_models("tiny")
    assert next(tiny["unet"].parameters()).device.type == "meta"
    with pytest.raises(StableEmoteError, match="Unknown layout"):
        LI.layout_models("sd2")


def test_figure_lora_rank(tmp_path):
    out = figures.figure_lora_rank(tmp_path / "rank.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures.figure_lora_rank(tmp_path / "again.png").read_bytes() == out.read_bytes()


# --- the layer written by hand (notebook 04 writes the same text) ----------------------


@pytest.mark.parametrize("name", ["LoRALinear", "inject_lora"])
def test_notebook_04_writes_the_same_lora_code_as_the_lesson_module(name):
    from lesson_code import module_definition, notebook_definition

    assert notebook_definition("04", name) == module_definition(getattr(L, name))


def test_hand_written_lora_matches_peft_and_merges(tiny_components):
    ours, theirs = copy.deepcopy(tiny_components.unet), copy.deepcopy(tiny_components.unet)
    inputs = unet_inputs(ours)
    base = run_unet(ours, inputs)
    names = L.inject_lora(ours, rank=2, alpha=4)
    assert sorted(names) == sorted(LF.target_layer_shapes(tiny_components.unet))
    assert all(isinstance(ours.get_submodule(n), L.LoRALinear) for n in names)
    assert torch.equal(run_unet(ours, inputs), base)  # B = 0
    torch.manual_seed(0)
    L.add_lora(theirs, rank=2, alpha=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in names:
            layer, peft_layer = ours.get_submodule(n), theirs.get_submodule(n)
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.1)
            peft_layer.lora_A["default"].weight.copy_(layer.A)
            peft_layer.lora_B["default"].weight.copy_(layer.B)
    adapted = run_unet(ours, inputs)
    assert (adapted - base).abs().max() > 100 * 1e-4
    torch.testing.assert_close(run_unet(theirs, inputs), adapted, atol=1e-4, rtol=1e-3)
    layer = ours.get_submodule(names[0])
    assert torch.linalg.matrix_rank(layer.delta_weight()) == 2
    weight = layer.base.weight.detach().clone()
    for n in names:
        ours.get_submodule(n).merge()
        ours.get_submodule(n).merge()  # a second merge must not add the update again
    assert layer.merged and not torch.equal(layer.base.weight, weight)
    torch.testing.assert_close(run_unet(ours, inputs), adapted, atol=1e-4, rtol=1e-3)
    for n in names:
        ours.get_submodule(n).unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(run_unet(ours, inputs), adapted, atol=1e-4, rtol=1e-3)
    assert "A: (2, " in repr(layer) and "B: (" in repr(layer)


def test_peft_names_still_import_from_the_lesson_module():
    from stableemote_utils import lora_peft

    for name in ("add_lora", "load_lora", "lora_loaded", "set_lora_state_dict", "fuse_lora"):
        assert getattr(L, name) is getattr(lora_peft, name)


# --- an SDXL-shaped adapter, from SDXL's UNet layout on the meta device -----------------

SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


def sdxl_like_lora_state_dict(rank: int = 2) -> dict[str, torch.Tensor]:
    """Zero rank-``rank`` LoRA tensors with SDXL's UNet layer names and shapes."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    state = {}
    for name, (d_out, d_in) in LF.target_layer_shapes(unet).items():
        state[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, d_in, dtype=torch.float16)
        state[f"unet.{name}.lora_B.weight"] = torch.zeros(d_out, rank, dtype=torch.float16)
    return state


def test_kohya_keys_match_diffusers_for_the_unet_and_keep_alpha_and_sd1_text_names():
    """Why kohya_state_dict is ours and not diffusers.utils.convert_state_dict_to_kohya.

    For UNet layers both give the same keys; but diffusers writes alpha = rank whatever
    the adapter's alpha (so an alpha-8 rank-4 adapter loses half its strength in the web
    UIs) and names text-encoder layers ``lora_te1_`` (SDXL's first encoder), which SD 1.x
    loaders do not read.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    g = torch.Generator().manual_seed(0)
    unet_layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    te_layer = "text_model.encoder.layers.0.self_attn.q_proj"
    peft = {}
    for prefix, layer in (("unet", unet_layer), ("text_encoder", te_layer)):
        peft[f"{prefix}.{layer}.lora_A.weight"] = torch.randn(4, 8, generator=g)
        peft[f"{prefix}.{layer}.lora_B.weight"] = torch.randn(8, 4, generator=g)
    result = LF.match_lora(peft, {})
    LF.apply_header_alpha(result, {"alpha": "8"})  # the UNet's alpha, from the file header
    ours = LI.kohya_state_dict(result)
    theirs = convert_state_dict_to_kohya(peft)

    unet_stem = "lora_unet_" + unet_layer.replace(".", "_")
    for suffix in (".lora_down.weight", ".lora_up.weight"):
        torch.testing.assert_close(ours[unet_stem + suffix], theirs[unet_stem + suffix])
    assert float(ours[unet_stem + ".alpha"]) == 8.0
    assert float(theirs[unet_stem + ".alpha"]) == 4.0  # alpha = rank: the scale is lost
    te_stem = "lora_te_" + te_layer.replace(".", "_")
    assert te_stem + ".lora_down.weight" in ours
    assert te_stem + ".lora_down.weight" not in theirs
    assert any(k.startswith("lora_te1_") for k in theirs)


# --- a lower-rank copy of an adapter (notebook 06's ranks section) ----------------------


def test_reduce_rank_keeps_an_update_that_already_has_the_lower_rank(
    pipe, tiny_components, tmp_path
):
    """An adapter of rank 4 whose B uses only 2 of its 4 columns has updates of rank 2: cut
    to rank 2 it keeps all of each update, so the UNet computes what it did."""
    from stableemote_utils.lora_inspect import inspect_lora, reduce_rank

    inputs = unet_inputs(pipe.unet)
    torch.manual_seed(0)
    L.add_lora(pipe.unet, rank=4, alpha=2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                p[:, 2:] = 0
    wanted = run_unet(pipe.unet, inputs)
    file = LF.save_lora(pipe.unet, tmp_path / "rank4", {"base_model": "tiny"})
    out, kept = reduce_rank(file, tmp_path / "rank2.safetensors", 2)
    assert kept == pytest.approx(1.0, abs=1e-9)
    assert inspect_lora(out)["ranks"] == [2]
    fresh = fresh_pipe(tiny_components)
    L.load_lora(fresh, out)
    torch.testing.assert_close(run_unet(fresh.unet, inputs), wanted, atol=1e-4, rtol=1e-3)


def test_reduce_rank_keeps_the_largest_directions_of_a_full_rank_update(trained, tmp_path):
    from stableemote_utils.lora_files import read_lora_file
    from stableemote_utils.lora_inspect import reduce_rank

    _, file, *_ = trained
    out, kept = reduce_rank(file, tmp_path / "rank1.safetensors", 1)
    assert 0.25 < kept < 1  # at least its share of 4 directions, and not all of it
    before, header = read_lora_file(file)
    after, new_header = read_lora_file(out)
    assert (new_header["rank"], new_header["alpha"]) == ("1", "1.0")
    key = sorted(k for k in before if k.endswith("lora_A.weight"))[0]
    up = key.replace("lora_A", "lora_B")
    scale = float(header["alpha"]) / before[key].shape[0]
    full = torch.linalg.svdvals((scale * before[up] @ before[key]).double())
    cut = torch.linalg.svdvals((after[up] @ after[key]).double())
    assert cut[0] == pytest.approx(float(full[0]), rel=1e-5) and cut[1] < 1e-6 * cut[0]
    with pytest.raises(StableEmoteError, match="from 1 to 3"):
        reduce_rank(file, tmp_path / "rank4.safetensors", 4)


def test_lora_diagram_shows_the_shapes_of_w_a_and_b():
    fig = figures.plot_lora_diagram(320, 320, rank=4, alpha=4)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "320 × 320" in texts and "4 × 320" in texts and "320 × 4" in texts
    assert "2,560 numbers instead of W's 102,400" in fig.axes[0].get_title()
