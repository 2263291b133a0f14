"""The fair comparison and its companions, on the tiny model with a random adapter."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from stableemote_utils.compare import (
    SamplingSettings,
    adapter_comparison,
    adapter_resolution_px,
    checkpoint_progression,
    comparison_prompts,
    comparison_sizes_px,
    fair_comparison,
    generate,
    list_adapter_checkpoints,
    regenerate,
    save_comparison,
    scale_sweep,
)
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import image_grid
from stableemote_utils.lora import add_lora
from stableemote_utils.lora_files import LORA_WEIGHT_NAME, save_lora

STEPS = 3
SIZE_PX = 64


def small(**overrides) -> SamplingSettings:
    """This file's settings (3 steps, 64 px, guidance 7.5), with ``overrides``."""
    return SamplingSettings(steps=STEPS, resolution_px=SIZE_PX).with_overrides(**overrides)


def make_adapter(unet, folder, rank=4, seed=0, std=0.05, metadata=None):
    """A LoRA file with small random B weights (non-zero, so it changes the output)."""
    unet = copy.deepcopy(unet)
    torch.manual_seed(seed)
    add_lora(unet, rank=rank)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in unet.named_parameters():
        if ".lora_B." in name:
            p.data = torch.randn(p.shape, generator=g) * std
    return save_lora(unet, folder, metadata)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from stableemote_utils.loading import load_components, make_pipeline

    return make_pipeline(load_components(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def adapter(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    return make_adapter(pipe.unet, folder, metadata={"resolution_px": str(SIZE_PX)})


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def has_adapter(pipe) -> bool:
    return bool(getattr(pipe.unet, "peft_config", None))


def test_base_and_lora_share_every_setting(pipe, adapter):
    grid, record = fair_comparison(
        pipe, adapter, small(prompts=["cat face", "fairy"], seeds=(3, 7))
    )
    entries = record["images"]
    assert len(entries) == 2 * 2 * 2
    for base, lora in zip(entries[0::2], entries[1::2], strict=True):
        assert (base["model"], lora["model"]) == ("base", "lora")
        for key in ("prompt", "seed", "steps", "guidance", "resolution_px", "generator"):
            assert base[key] == lora[key], key
        assert base["generator"] == {"device": "cpu", "seed": base["seed"]}
        assert base["scheduler"] == lora["scheduler"]
        assert base["scheduler"]["class"] == type(pipe.scheduler).__name__
        assert (base["lora_scale"], lora["lora_scale"]) == (0.0, 1.0)
    assert [e["seed"] for e in entries[:4]] == [3, 3, 7, 7]
    assert record["lora_sha256"] and record["prompts"] == ["cat face", "fairy"]
    assert not has_adapter(pipe)
    # The base column is exactly the base model; the LoRA column differs from it.
    base_img = generate(pipe, "An emoji of cat face", 3, small())
    assert grid.width > 4 * SIZE_PX and grid.height > 2 * SIZE_PX
    redo = image_grid(
        [base_img, base_img, base_img, base_img],
        cols=4,
        row_labels=["cat face"],
        col_labels=["base s3", "LoRA s3", "base s7", "LoRA s7"],
    )
    top = pixels(grid)[: redo.height]
    assert not np.array_equal(top, pixels(redo)), "the LoRA images equal the base images"


def test_regenerate_reproduces_the_grid_bit_for_bit(pipe, adapter, tmp_path):
    grid, record = fair_comparison(pipe, adapter, small(prompts=["smiling cat"], seeds=(1,)))
    png, js = save_comparison(grid, record, tmp_path / "cmp.png")
    assert png.exists() and json.loads(js.read_text()) == json.loads(json.dumps(record))
    again, again_record = regenerate(js, pipe)
    assert np.array_equal(pixels(again), pixels(grid))
    assert again_record["images"] == record["images"]


def test_regenerate_refuses_a_changed_adapter(pipe, tmp_path):
    file = make_adapter(pipe.unet, tmp_path / "a", seed=5)
    grid, record = fair_comparison(pipe, file, small(prompts=["fairy"], steps=1))
    _, js = save_comparison(grid, record, tmp_path / "cmp.png")
    make_adapter(pipe.unet, tmp_path / "a", seed=6)
    with pytest.raises(StableEmoteError, match="changed"):
        regenerate(js, pipe)


def test_one_load_serves_the_comparison_and_the_sweep(pipe, adapter, monkeypatch):
    from stableemote_utils import lora_peft as lora

    cat = small(prompts=["cat face"], seeds=(2,))
    alone_grid, alone_record = fair_comparison(pipe, adapter, cat)
    alone_sweep = scale_sweep(pipe, adapter, cat, scales=(0.0, 1.0))
    loads = []
    real_load = lora.load_lora
    monkeypatch.setattr(lora, "load_lora", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with lora.lora_loaded(pipe, adapter, adapter_name="shared") as name:
        grid, record = fair_comparison(pipe, adapter, cat, adapter_name=name)
        sweep = scale_sweep(pipe, adapter, cat, scales=(0.0, 1.0), adapter_name=name)
        assert has_adapter(pipe), "an adapter loaded by the caller stays loaded"
    assert len(loads) == 1
    assert not has_adapter(pipe)
    assert np.array_equal(pixels(grid), pixels(alone_grid))
    assert np.array_equal(pixels(sweep), pixels(alone_sweep))
    assert record["images"] == alone_record["images"]


def test_scale_sweep_runs_from_base_to_adapter(pipe, adapter):
    cat = small(prompts=["cat face"], seeds=(2,))
    strip = scale_sweep(pipe, adapter, cat, scales=(0.0, 1.0))
    assert not has_adapter(pipe)
    base = generate(pipe, "An emoji of cat face", 2, small())
    from stableemote_utils.lora import load_lora, unload_lora

    load_lora(pipe, adapter)
    lora = generate(pipe, "An emoji of cat face", 2, small())
    unload_lora(pipe)
    expected = image_grid(
        [base, lora], cols=2, row_labels=["cat face"], col_labels=["scale 0", "scale 1"]
    )
    assert np.array_equal(pixels(strip), pixels(expected))
    assert not np.array_equal(pixels(base), pixels(lora))
    with pytest.raises(StableEmoteError, match="at least one scale"):
        scale_sweep(pipe, adapter, cat, scales=())


def fake_run(pipe, folder):
    for step, seed in ((10, 1), (20, 2)):
        make_adapter(pipe.unet, folder / "checkpoints" / f"checkpoint-{step:06d}", seed=seed)
    make_adapter(pipe.unet, folder, seed=3)
    (folder / "summary.json").write_text(json.dumps({"steps": 30}))
    (folder / "checkpoints" / "checkpoint-000040.tmp").mkdir()  # an unfinished write: ignored
    return folder


def test_checkpoint_progression_shows_every_checkpoint(pipe, tmp_path):
    run = fake_run(pipe, tmp_path)
    found = list_adapter_checkpoints(run)
    assert [s for s, _ in found] == [10, 20, 30]
    assert found[-1][1] == run / LORA_WEIGHT_NAME
    strip = checkpoint_progression(pipe, run, small(prompts=["fairy", "cat face"], seeds=(4, 5)))
    assert not has_adapter(pipe)
    from stableemote_utils.lora import load_lora, unload_lora

    images = [generate(pipe, "An emoji of fairy", 4, small())]
    for _, file in found:
        load_lora(pipe, file)
        images.append(generate(pipe, "An emoji of fairy", 4, small()))
        unload_lora(pipe)
    labels = ["step 0", "step 10", "step 20", "step 30"]
    expected = image_grid(images, cols=4, row_labels=["fairy"], col_labels=labels)
    assert np.array_equal(pixels(strip), pixels(expected))
    with pytest.raises(StableEmoteError, match="No adapter"):
        list_adapter_checkpoints(tmp_path / "empty")


def test_adapter_comparison_puts_ranks_side_by_side(pipe, tmp_path):
    ranks = {f"rank {r}": make_adapter(pipe.unet, tmp_path / f"r{r}", rank=r) for r in (2, 8)}
    grid = adapter_comparison(pipe, ranks, small(prompts=["cat face"]))
    assert not has_adapter(pipe)
    from stableemote_utils.lora import load_lora, unload_lora

    images = [generate(pipe, "An emoji of cat face", 0, small())]
    for file in ranks.values():
        load_lora(pipe, file)
        images.append(generate(pipe, "An emoji of cat face", 0, small()))
        unload_lora(pipe)
    expected = image_grid(
        images, cols=3, row_labels=["cat face"], col_labels=["base", "rank 2", "rank 8"]
    )
    assert np.array_equal(pixels(grid), pixels(expected))
    with pytest.raises(StableEmoteError):
        adapter_comparison(pipe, {}, small(prompts=["cat face"]))


def test_prompts_sizes_and_adapter_resolution(adapter, tmp_path, pipe):
    from stableemote_utils.data import is_heldout
    from stableemote_utils.presets import get_preset

    original, heldout = comparison_prompts("tiny", heldout_count=3)
    assert len(original) == 8 and original[0] == "smiling face with open mouth"
    tiny = get_preset("tiny")
    assert len(heldout) == 3
    assert all(is_heldout(n, tiny.heldout_fraction) for n in heldout)
    assert comparison_sizes_px("tiny") == (tiny.resolution_px, 2 * tiny.resolution_px)
    assert comparison_sizes_px("sd15") == (256, 512)
    assert adapter_resolution_px(adapter) == SIZE_PX
    bare = make_adapter(pipe.unet, tmp_path / "bare")
    assert adapter_resolution_px(bare, default=99) == 99
