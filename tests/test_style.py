"""The LoRA lesson's two measurements: a style probe, and subject kept (tinyemote.style)."""

from __future__ import annotations

import pytest
import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.tinyemote import style


def test_logistic_probe_separates_two_clouds_and_calls_the_right_side_openmoji():
    g = torch.Generator().manual_seed(0)
    noto = torch.randn(40, 5, generator=g)
    openmoji = torch.randn(40, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])
    labels = torch.tensor([0] * 40 + [1] * 40)
    probe = style.fit_logistic(torch.cat([noto, openmoji]), labels)
    assert probe.weight.shape == (5,)
    assert probe.is_openmoji(torch.tensor([[4.0, 0, 0, 0, 0], [-1.0, 0, 0, 0, 0]])).tolist() == [
        True,
        False,
    ]
    with pytest.raises(StableEmoteError, match="both styles"):
        style.fit_logistic(noto, torch.zeros(40))


def test_share_is_counted_from_the_probes_calls_with_an_interval_around_it():
    got = style.share(torch.tensor([True, False, True, True]))
    assert (got["share"], got["count"], got["n"]) == (0.75, 3, 4)
    assert got["low"] < 0.75 < got["high"]


def test_wilson_interval_matches_the_formula_and_stays_in_zero_one():
    low, high = style.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert style.wilson_interval(0, 80)[0] == 0.0 and style.wilson_interval(80, 80)[1] == 1.0
    assert style.wilson_interval(40, 80)[1] - style.wilson_interval(40, 80)[0] < 0.25
    with pytest.raises(StableEmoteError):
        style.wilson_interval(3, 2)


def test_bootstrap_interval_contains_the_mean_and_resamples_pairs_together():
    values = torch.arange(100.0)
    low, high = style.bootstrap_interval(values)
    assert low < values.mean() < high and high - low < 20
    pairs = torch.stack([values + 1, 2 * (values + 1)], 1)  # the ratio is 2 in every pair

    def ratio(rows):
        return rows[:, 1].mean() / rows[:, 0].mean()

    assert style.bootstrap_interval(pairs, ratio) == pytest.approx((2.0, 2.0))


def test_subject_prompts_are_balanced_training_names():
    from stableemote_utils.data import is_heldout
    from stableemote_utils.presets import get_preset
    from stableemote_utils.tinyemote.evaluate import CATEGORIES, category_of

    prompts = style.subject_prompts(2)
    assert [c for _, c in prompts] == [c for c in CATEGORIES for _ in range(2)]
    fraction = get_preset("tiny").heldout_fraction
    assert not any(is_heldout(n, fraction) for n, _ in prompts)
    assert all(category_of(n) == c for n, c in prompts if c != "flag")  # flags need the char


def test_probe_on_the_tiny_clip_tells_real_noto_from_real_openmoji(tinyemote_dir):
    """On a sample (200 drawings a style to train; every held-out name's drawings to test,
    91 a style): far above chance (50%), though short of the full probe's 95%."""
    from stableemote_utils.tinyemote.clip import load_tiny_clip

    clip, _ = load_tiny_clip(tinyemote_dir)
    probe, record = style.fit_style_probe(clip, limit=200)
    assert record["train_images"] == 400 and record["heldout_images"] == 182
    assert record["heldout_accuracy"] >= 0.8
    assert record["heldout_low"] <= record["heldout_accuracy"] <= record["heldout_high"]
    images, labels = style.real_style_set("heldout", 4)
    assert style.style_features(clip, images).shape == (8, 512)
    assert labels.tolist() == [0] * 4 + [1] * 4


@pytest.fixture(scope="module")
def two_step_lora(tinyemote_dir, tmp_path_factory):
    """``(clip, probe, adapter, prompts)``: the tiny CLIP, a probe on random features (its
    calls are arbitrary, only their counting is tested), a 2-step style LoRA, two prompts."""
    from stableemote_utils.tinyemote.clip import load_tiny_clip
    from stableemote_utils.tinyemote.evaluate import style_lora

    clip = load_tiny_clip(tinyemote_dir)
    probe = style.fit_logistic(torch.randn(8, 512), torch.tensor([0, 1] * 4))
    adapter = style_lora(tmp_path_factory.mktemp("style") / "lora", steps=2).adapter_path
    return clip, probe, adapter, [("grinning face", "face"), ("red heart", "heart")]


def test_style_and_subject_draws_base_and_lora_from_the_same_noise(tinyemote_pipe, two_step_lora):
    import numpy as np

    clip, probe, adapter, prompts = two_step_lora
    got = style.style_and_subject(tinyemote_pipe, adapter, clip, probe, prompts, seeds=(5, 50))
    assert got["pictures"] == 4 and got["seeds"] == [5, 50]
    for side in ("base", "lora"):
        assert got[side]["openmoji"]["n"] == 4 and got[side]["prompt_following"]["n"] == 4
        assert 0 <= got[side]["clip_score"]["mean"] <= 100
    base = got["images"]["base"]
    again = style.draw(tinyemote_pipe, ["An emoji of red heart"], seeds=(51, 52))
    diff = [np.abs(np.asarray(base[3], float) - np.asarray(im, float)).mean() for im in again]
    assert diff[0] < 0.1 < 1 < diff[1]  # seed-major; picture i of seed s uses s + i (batch aside)
    ratio = got["changes"]["clip_score_ratio"]
    assert ratio == pytest.approx(
        got["lora"]["clip_score"]["mean"] / got["base"]["clip_score"]["mean"]
    )
    assert set(style.bars_met({"heldout_accuracy": 1.0}, got)) == set(style.BARS)


def test_evaluate_tiny_prints_the_probe_and_both_models_style_and_subject():
    from stableemote_utils.tinyemote.card import style_subject_lines

    def s(x):
        return {"share": x, "low": x - 0.05, "high": x + 0.05}

    record = {
        "style": {"lora_steps": 300},
        "style_probe": {
            "heldout_accuracy": 0.95,
            "heldout_low": 0.91,
            "heldout_high": 0.97,
            "heldout_images": 182,
        },
        "style_and_subject": {
            "pictures": 80,
            "prompts": ["a"] * 20,
            "seeds": [0, 100, 200, 300],
            "base": {
                "openmoji": s(0.1),
                "prompt_following": s(1.0),
                "clip_score": {"mean": 74.7, "low": 73.0, "high": 76.0},
            },
            "lora": {
                "openmoji": s(0.85),
                "prompt_following": s(0.975),
                "clip_score": {"mean": 72.0, "low": 70.0, "high": 74.0},
            },
            "changes": {
                "clip_score_ratio": 0.964,
                "clip_score_ratio_low": 0.94,
                "clip_score_ratio_high": 0.98,
                "prompt_following_points": -2.5,
            },
        },
    }
    text = "\n".join(style_subject_lines(record))
    assert "95% [91%, 97%] right on 182 real held-out drawings" in text
    assert "80 pictures (20 training-name prompts x 4 seeds)" in text
    assert "300-step OpenMoji LoRA" in text
    assert "called OpenMoji by the probe: 10% [5%, 15%] -> 85% [80%, 90%]" in text
    assert "100% [95%, 105%] -> 98% [92%, 102%] (-2.5 points)" in text
    assert "74.7 [73.0, 76.0] -> 72.0 [70.0, 74.0] (LoRA / base 0.96 [0.94, 0.98])" in text
    assert style_subject_lines({}) == []


def test_measure_adapters_draws_every_adapter_from_the_same_noise_and_tabulates_them(
    tinyemote_pipe, two_step_lora
):
    clip, probe, adapter, prompts = two_step_lora
    adapters = {"step 1": adapter, "step 2": adapter}  # one file twice: the same pictures
    got = style.measure_adapters(tinyemote_pipe, adapters, clip, probe, prompts, seeds=(7,))
    assert list(got["models"]) == ["base", "step 1", "step 2"] and got["pictures"] == 2
    assert list(got["changes"]) == ["step 1", "step 2"]
    assert got["models"]["step 1"] == got["models"]["step 2"]
    assert got["changes"]["step 1"] == got["changes"]["step 2"]
    table = style.measurement_table(
        got,
        {
            "heldout_accuracy": 0.95,
            "heldout_low": 0.91,
            "heldout_high": 0.97,
            "heldout_images": 182,
        },
    )
    lines = table.splitlines()
    assert lines[0].startswith("style probe: 95% [91%, 97%] right on 182")
    assert "2 pictures per model: 2 prompts x 1 seeds" in lines[1]
    rows = {
        line.split()[0] + (" " + line.split()[1] if line.startswith("step") else ""): line
        for line in lines[4:]
    }
    assert set(rows) == {"base", "step 1", "step 2"}
    ratio = got["changes"]["step 2"]["clip_score_ratio"]
    assert f"(x{ratio:.2f})" in rows["step 2"] and "(x" not in rows["base"]
