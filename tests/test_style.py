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


def _picture_width(values: torch.Tensor) -> float:
    low, high = style.bootstrap_interval(values.flatten())
    return high - low


def _cluster_width(values: torch.Tensor) -> float:
    got = style.level(values, binary=False)
    return got["high"] - got["low"]


def test_resampling_prompts_widens_the_interval_when_the_seeds_of_a_prompt_agree():
    """20 prompts at 4 seeds whose pictures score alike within a prompt: 80 pictures carry
    the information of about 20, so the cluster interval must be about twice as wide as one
    that resamples the 80 pictures as if independent."""
    g = torch.Generator().manual_seed(0)
    per_prompt = torch.rand(20, generator=g)
    values = per_prompt.expand(4, 20) + 0.01 * torch.randn(4, 20, generator=g)
    assert _cluster_width(values) > 1.6 * _picture_width(values)


def test_resampling_prompts_agrees_with_resampling_pictures_when_pictures_are_independent():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(4, 20, generator=g)
    assert 0.75 < _cluster_width(values) / _picture_width(values) < 1.33


def test_the_interval_has_the_width_the_spread_of_the_prompts_gives():
    """Seeds stay with their prompt: the interval is about mean +- 1.96 standard errors of
    the 20 prompt means, whatever the seeds do inside each prompt."""
    g = torch.Generator().manual_seed(3)
    values = torch.rand(20, generator=g).expand(4, 20) + torch.randn(4, 20, generator=g)
    prompt_means = values.mean(0)
    expected = 2 * 1.96 * prompt_means.std() / 20**0.5
    assert _cluster_width(values) == pytest.approx(float(expected), rel=0.15)
    shuffled = values[torch.randperm(4, generator=g)]  # seeds relabelled within prompts
    assert _cluster_width(shuffled) == pytest.approx(_cluster_width(values))


def test_a_paired_difference_keeps_the_pairs_and_reports_points():
    g = torch.Generator().manual_seed(2)
    base = torch.rand(4, 20, generator=g)
    got = style.difference(base + 0.3, base, scale=100)  # the same shift on every picture
    assert got["value"] == pytest.approx(30) and (got["low"], got["high"]) == pytest.approx(
        (30, 30)
    )
    unpaired = style.difference(base + 0.3, base.roll(1, dims=1), scale=100)
    assert unpaired["high"] - unpaired["low"] > 10  # other pictures paired: a spread
    r = style.ratio(2 * (base + 1), base + 1)
    assert (r["value"], r["low"], r["high"]) == pytest.approx((2, 2, 2))


def test_a_share_that_no_picture_moves_gets_the_wilson_interval_over_its_prompts():
    got = style.level(torch.zeros(4, 20), binary=True)
    assert (got["share"], got["count"], got["n"], got["low"]) == (0, 0, 80, 0)
    assert got["high"] == pytest.approx(style.wilson_interval(0, 20)[1]) and got["high"] > 0.1
    some = style.level(torch.eye(4, 20), binary=True)
    assert some["count"] == 4 and some["low"] < 0.05 < some["high"]


def test_bars_are_judged_on_the_point_or_on_the_whole_interval():
    def x(v, low, high, key="share"):
        return {key: v, "low": low, "high": high}

    split = {
        "models": {
            "base": {"openmoji": x(0.0, 0.0, 0.16)},
            "lora": {"openmoji": x(0.84, 0.70, 0.94)},
        },
        "changes": {
            "lora - base": {
                "prompt_following_points": x(-4, -9, 0, "value"),
                "clip_score_ratio": x(0.98, 0.96, 0.99, "value"),
            }
        },
    }
    probe = {"heldout_accuracy": 0.95, "heldout_low": 0.91}
    assert all(style.bars_met(probe, split, "point").values())
    on_interval = style.bars_met(probe, split, "interval")
    assert [k for k, ok in on_interval.items() if not ok] == [
        "lora_openmoji_share",
        "prompt_following_points",
    ]
    with pytest.raises(StableEmoteError, match="point"):
        style.bars_met(probe, split, "median")


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


@pytest.mark.slow
def test_style_and_subject_draws_three_models_from_the_same_noise(tinyemote_pipe, two_step_lora):
    import numpy as np

    clip, probe, adapter, prompts = two_step_lora
    splits = {"train": prompts, "heldout": [("pinching hand", "hand")]}
    got = style.style_and_subject(tinyemote_pipe, adapter, clip, probe, (5, 50), splits)
    assert got["seeds"] == [5, 50] and list(got["splits"]) == ["train", "heldout"]
    assert got["captions"]["base_word"] == "An emoji of openmoji {name}"
    train = got["splits"]["train"]
    assert train["pictures"] == 4 and list(train["models"]) == ["base", "base_word", "lora"]
    assert list(train["changes"]) == ["lora - base", "lora - base_word"]
    for m in train["models"].values():
        assert m["openmoji"]["n"] == 4 and m["prompt_following"]["n"] == 4
        assert 0 <= m["clip_score"]["mean"] <= 100
    c = train["changes"]["lora - base"]
    assert c["clip_score_ratio"]["value"] == pytest.approx(
        train["models"]["lora"]["clip_score"]["mean"]
        / train["models"]["base"]["clip_score"]["mean"]
    )
    assert c["prompt_following_points"]["value"] == pytest.approx(
        100
        * (
            train["models"]["lora"]["prompt_following"]["share"]
            - train["models"]["base"]["prompt_following"]["share"]
        )
    )
    assert got["splits"]["heldout"]["pictures"] == 2
    base, word = got["images"]["train"]["base"], got["images"]["train"]["base_word"]
    again = style.draw(tinyemote_pipe, ["An emoji of red heart"], seeds=(51, 52))
    diff = [np.abs(np.asarray(base[3], float) - np.asarray(im, float)).mean() for im in again]
    assert diff[0] < 0.1 < 1 < diff[1]  # seed-major; picture i of seed s uses s + i (batch aside)
    said = style.draw(tinyemote_pipe, ["An emoji of openmoji red heart"], seeds=(51,))[0]
    assert np.abs(np.asarray(word[3], float) - np.asarray(said, float)).mean() < 0.1
    table = style.lesson_table(
        got, {"heldout_accuracy": 1, "heldout_low": 0.9, "heldout_high": 1, "heldout_images": 8}
    )
    assert 'base + "openmoji"' in table and "held-out names:" in table
    assert "LoRA - base" in table and 'LoRA - base + "openmoji"' in table


def test_evaluate_tiny_prints_three_models_on_both_name_sets_and_the_bars_both_ways():
    from stableemote_utils.tinyemote.card import style_subject_lines

    def x(v, key="share"):
        return {key: v, "low": v - 0.05, "high": v + 0.05, "count": 1, "n": 80}

    def model(o, p, c):
        return {"openmoji": x(o), "prompt_following": x(p), "clip_score": x(c, "mean")}

    def change(o, p, c, r):
        return {
            "openmoji_points": x(o, "value"),
            "prompt_following_points": x(p, "value"),
            "clip_score_points": x(c, "value"),
            "clip_score_ratio": x(r, "value"),
        }

    split = {
        "pictures": 80,
        "prompts": ["a"] * 20,
        "seeds": [0, 100, 200, 300],
        "models": {
            "base": model(0.0, 1.0, 76.1),
            "base_word": model(0.6, 0.9, 70.0),
            "lora": model(0.84, 0.95, 74.3),
        },
        "changes": {
            "lora - base": change(84, -4, -1.8, 0.98),
            "lora - base_word": change(24, 5, 4.3, 1.06),
        },
    }
    record = {
        "style": {"lora_steps": 300},
        "style_probe": {
            "heldout_accuracy": 0.95,
            "heldout_low": 0.91,
            "heldout_high": 0.97,
            "heldout_images": 182,
        },
        "style_and_subject": {
            "seeds": [0, 100, 200, 300],
            "captions": {"base": "An emoji of {name}", "base_word": "An emoji of openmoji {name}"},
            "splits": {"train": split, "heldout": split},
        },
    }
    text = "\n".join(style_subject_lines(record))
    assert "95% [91%, 97%] right on 182 real held-out drawings" in text
    assert "300-step OpenMoji LoRA" in text and "cluster bootstrap over the prompts" in text
    assert "training names:" in text and "held-out names:" in text
    lines = text.splitlines()
    [word] = [x for x in lines if x.startswith('base + "openmoji"')][:1]
    assert word.split()[3:6] == ["60%", "[55%,", "65%]"]
    change = next(x for x in lines if x.startswith('LoRA - base + "openmoji"'))
    assert "+24 [+24, +24] pts" in change and "x1.06 [1.01, 1.11]" in change
    bar = next(x for x in text.splitlines() if "lora_openmoji_share" in x)
    assert bar.split()[1:] == [
        ">=",
        "0.8",
        "point",
        "0.84",
        "met",
        "interval",
        "low",
        "0.79",
        "NOT",
        "met",
    ]
    assert style_subject_lines({}) == []


@pytest.mark.slow
def test_measure_adapters_draws_every_adapter_from_the_same_noise_and_tabulates_them(
    tinyemote_pipe, two_step_lora
):
    clip, probe, adapter, prompts = two_step_lora
    adapters = {"step 1": adapter, "step 2": adapter}  # one file twice: the same pictures
    got = style.measure_adapters(tinyemote_pipe, adapters, clip, probe, prompts, seeds=(7,))
    assert list(got["models"]) == ["base", "step 1", "step 2"] and got["pictures"] == 2
    assert list(got["changes"]) == ["step 1 - base", "step 2 - base"]
    assert got["models"]["step 1"] == got["models"]["step 2"]
    assert got["changes"]["step 1 - base"] == got["changes"]["step 2 - base"]
    assert got["values"]["base"].shape == (3, 1, 2)
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
    rows = [line[:26].strip() for line in lines[4:]]
    assert rows == ["base", "step 1", "step 2", "step 1 - base", "step 2 - base"]
    ratio = got["changes"]["step 2 - base"]["clip_score_ratio"]["value"]
    assert f"x{ratio:.2f}" in lines[-1] and "x" not in lines[4][26:]
