"""``--lora-target-modules``: which UNet layers get a LoRA, convolutions included."""

from __future__ import annotations

import tomllib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stableemote_utils.cli.main import main
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora_files import LORA_TARGET_MODULES, LORA_WEIGHT_NAME

TARGETS = ("attn1.to_q", "conv1")


def _layer_names(adapter: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".lora_")[0] for k in adapter}


def test_the_default_targets_are_the_attention_projections(tmp_path, capsys, short_run):
    assert main(short_run.argv(tmp_path / "run", steps=1)) == 0, capsys.readouterr().err
    layers = _layer_names(load_file(tmp_path / "run" / LORA_WEIGHT_NAME))
    assert layers and all(any(n.endswith("." + t) for t in LORA_TARGET_MODULES) for n in layers)
    assert not any(n.endswith(".conv1") for n in layers)


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_chosen_targets_train_only_those_layers_and_load_into_a_pipeline(
    tmp_path, capsys, short_run, tiny_components
):
    from stableemote_utils.loading import make_pipeline
    from stableemote_utils.lora import lora_loaded

    out = tmp_path / "run"
    argv = short_run.argv(out, "--lora-target-modules", ",".join(TARGETS), steps=2)
    assert main(argv) == 0, capsys.readouterr().err
    adapter = load_file(out / LORA_WEIGHT_NAME)
    layers = _layer_names(adapter)
    assert {t for t in TARGETS if any(n.endswith("." + t) for n in layers)} == set(TARGETS)
    assert all(any(n.endswith("." + t) for t in TARGETS) for n in layers)
    assert not any(n.endswith("attn2.to_q") for n in layers)  # "attn1.to_q" is not "to_q"
    # A convolution's A is a k x k conv and its B a 1 x 1 conv; training moved B from zero.
    conv_up = [v for k, v in adapter.items() if k.endswith("conv1.lora_B.weight")]
    conv_down = [v for k, v in adapter.items() if k.endswith("conv1.lora_A.weight")]
    assert conv_up and all(v.ndim == 4 and v.shape[2:] == (1, 1) for v in conv_up)
    assert all(v.ndim == 4 and v.shape[2:] == (3, 3) for v in conv_down)
    assert any(v.abs().max() > 0 for v in conv_up)
    with safe_open(out / LORA_WEIGHT_NAME, "pt") as f:
        assert set(f.metadata()["target_modules"].split(",")) == set(TARGETS)
    settings = tomllib.loads((out / "config.toml").read_text())
    assert settings["target_modules"] == list(TARGETS)
    assert ", ".join(TARGETS) in (out / "README.md").read_text()

    pipe = make_pipeline(tiny_components)
    pipe.set_progress_bar_config(disable=True)

    def draw() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return pipe("cat face", num_inference_steps=2, generator=g, output_type="pt").images

    before = draw()
    with lora_loaded(pipe, out / LORA_WEIGHT_NAME, adapter_name="targets"):
        during = draw()
    assert not torch.equal(before, during)
    assert torch.equal(before, draw())


def test_resuming_with_other_targets_is_refused(tmp_path, capsys, short_run):
    out = tmp_path / "run"
    assert main(short_run.argv(out, stop_after_steps=2)) == 0, capsys.readouterr().err
    argv = short_run.argv(out, "--resume", "latest", "--lora-target-modules", "conv1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "target_modules" in err and "--lora-target-modules" in err


@pytest.mark.parametrize(
    ("targets", "words"),
    [
        ([], ["'target_modules' must be a list of texts"]),
        (["to_z"], ["No layer of the UNet matched", "to_z", "conv1"]),
    ],
)
def test_bad_targets_are_one_line(tmp_path, capsys, short_run, targets, words):
    (tmp_path / "run.toml").write_text(f"target_modules = {targets!r}\n".replace("'", '"'))
    argv = short_run.argv(tmp_path / "run", "--config", str(tmp_path / "run.toml"))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err
    assert not list((tmp_path / "run").glob("checkpoints/*"))


@pytest.mark.parametrize("targets", [(), ("",), "to_q"])
def test_the_option_check_names_the_flag(targets):
    from stableemote_utils.options import check_train_options
    from stableemote_utils.training_config import recipe

    with pytest.raises(StableEmoteError, match="--lora-target-modules must be"):
        check_train_options(recipe("tiny-quick", target_modules=targets))


def test_globs_and_removals_pick_layers_by_their_whole_name(tiny_components):
    from stableemote_utils.lora_files import target_layer_shapes

    unet = tiny_components.unet
    every = target_layer_shapes(unet, ("*",))
    up = target_layer_shapes(unet, ("up_blocks.2.*", "!attn2.to_k", "!attn2.to_v"))
    assert up and all(n.startswith("up_blocks.2.") for n in up)
    assert not any(n.endswith(("attn2.to_k", "attn2.to_v")) for n in up)
    assert any(n.endswith("attn2.to_q") for n in up) and any(n.endswith("conv1") for n in up)
    assert set(up) == {
        n
        for n in every
        if n.startswith("up_blocks.2.") and not n.endswith(("attn2.to_k", "attn2.to_v"))
    }
    # "to_q" is a name ending, not a glob: it does not pick "to_qx"-like names by prefix.
    assert set(target_layer_shapes(unet, ("to_q",))) == {n for n in every if n.endswith(".to_q")}


def test_a_glob_recipe_trains_and_reloads(tmp_path, capsys, short_run, tiny_components):
    from stableemote_utils.lora_files import check_lora_fits, target_layer_shapes

    out = tmp_path / "run"
    targets = "up_blocks.2.*,!attn2.to_k,!attn2.to_v"
    assert main(short_run.argv(out, "--lora-target-modules", targets, steps=1)) == 0, (
        capsys.readouterr().err
    )
    layers = _layer_names(load_file(out / LORA_WEIGHT_NAME))
    want = target_layer_shapes(tiny_components.unet, tuple(targets.split(",")))
    assert {n.removeprefix("unet.") for n in layers} == set(want)
    check_lora_fits(out / LORA_WEIGHT_NAME, {"unet": tiny_components.unet})
