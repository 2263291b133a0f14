"""Cross-attention recording: right shapes, probabilities, unchanged output, restored processors."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from lesson_code import module_definition, notebook_definition

from stableemote_utils.attention import (
    CrossAttentionRecorder,
    cross_attention_maps,
    cross_attention_sides,
    prompt_token_positions,
    recording_cross_attention,
    word_shares,
    word_token_positions,
)
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.figures import plot_attention_maps
from stableemote_utils.sampling import SamplingSettings

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from stableemote_utils.loading import load_components, make_pipeline

    return make_pipeline(load_components(str(tiny_model_dir)))


def unet_inputs(pipe, batch=2):
    unet = pipe.unet
    side = unet.config.sample_size
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((batch, unet.config.in_channels, side, side), generator=g)
    text = torch.randn((batch, 77, unet.config.cross_attention_dim), generator=g)
    return latents, torch.tensor(500), text


def test_notebook_06_writes_the_recorder_the_module_holds():
    assert notebook_definition("06", "CrossAttentionRecorder") == module_definition(
        CrossAttentionRecorder
    )


def test_recording_keeps_the_output_and_restores_the_processors(pipe):
    unet = pipe.unet
    latents, t, text = unet_inputs(pipe)
    before = dict(unet.attn_processors)
    side = unet.config.sample_size  # the highest resolution: the latent's own side
    assert cross_attention_sides(unet, side) == [side, side // 2]
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text).sample
        with recording_cross_attention(unet, side) as kept:
            swapped = unet.attn_processors
            recorded = unet(latents, t, encoder_hidden_states=text).sample
    assert torch.equal(plain, recorded)
    n_cross = sum(".attn2." in n for n in before)
    assert n_cross > 0
    assert sum(isinstance(p, CrossAttentionRecorder) for p in swapped.values()) == n_cross
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    # TinyEmote has one cross-attention layer at the latent's side on the way down and one
    # on the way up; the others work at half the side and are not kept.
    assert 1 <= len(kept) < n_cross
    for probs in kept:
        assert probs.shape == (latents.shape[0], side * side, 77)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]), atol=1e-5, rtol=0)
        assert (probs >= 0).all()


def test_processors_come_back_after_an_error(pipe):
    unet = pipe.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), recording_cross_attention(unet, 4):
        raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_word_positions(pipe):
    tok = pipe.tokenizer
    prompt = "An emoji of cat face"
    ids = tok(prompt).input_ids
    pos = word_token_positions(tok, prompt, "cat")
    assert [ids[i] for i in pos] == tok("cat", add_special_tokens=False).input_ids
    assert pos[0] >= 1
    assert word_token_positions(tok, prompt, "face")[0] > pos[-1]
    with pytest.raises(StableEmoteError, match="not a word of the prompt"):
        word_token_positions(tok, prompt, "dog")
    words = prompt_token_positions(tok, prompt)
    assert words == list(range(1, len(ids) - 1))  # neither the start nor the end token
    assert ids[words[-1] + 1] == tok.eos_token_id and ids[0] == tok.bos_token_id


def test_word_shares_renormalise_over_the_prompt():
    probs = torch.zeros(2, 77)
    probs[0, 0], probs[0, 1], probs[0, 2] = 0.8, 0.15, 0.05  # start token, "cat", "face"
    probs[1, 0], probs[1, 1], probs[1, 2] = 0.5, 0.25, 0.25
    shares = word_shares(probs, [1, 2], [[1], [2]])
    torch.testing.assert_close(shares, torch.tensor([[0.75, 0.5], [0.25, 0.5]]))


def test_cross_attention_maps_shapes_and_plot(pipe):
    steps = 4
    settings = SamplingSettings(prompts=("cat face",), seeds=(1,), steps=steps, resolution_px=64)
    res = cross_attention_maps(pipe, settings, words=["cat", "face"])
    side = 64 // pipe.vae_scale_factor
    assert res["map_side"] == side
    assert res["steps"] == [0, 2, 3]
    assert res["maps"].shape == (3, 2, side, side)
    assert ((res["maps"] > 0) & (res["maps"] <= 1)).all()
    n_words = len(prompt_token_positions(pipe.tokenizer, "An emoji of cat face"))
    assert res["uniform"] == pytest.approx(1 / n_words)
    assert res["image"].size == (64, 64)
    assert all(
        not isinstance(p, CrossAttentionRecorder) for p in pipe.unet.attn_processors.values()
    )
    # The steps differ (the latents change as they are denoised), so the maps do too.
    assert not torch.equal(res["maps"][0], res["maps"][-1])
    fig = plot_attention_maps({"base": res, "LoRA": res}, title="t")
    assert len(fig.axes) == 2 * 2 * (len(res["steps"]) + 1)
    cat = SamplingSettings(prompts=("cat",), steps=2, resolution_px=64)
    with pytest.raises(StableEmoteError, match="attention sides"):
        cross_attention_maps(pipe, cat, words=["cat"], map_side=3)
    with pytest.raises(StableEmoteError, match="at_steps"):
        cross_attention_maps(pipe, cat, words=["cat"], at_steps=[5])
