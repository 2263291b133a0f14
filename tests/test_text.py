"""Tests for stableemote_utils.text with the real CLIP tokenizer and a small text encoder."""

import numpy as np
import pytest
import torch
from PIL import Image

from stableemote_utils import figures
from stableemote_utils import text as T
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.images import IMAGES_DIR
from stableemote_utils.tiny_model import TINY_TEXT_CONFIG


@pytest.fixture(scope="module")
def tokenizer():
    return T.clip_tokenizer()


@pytest.fixture(scope="module")
def text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)).eval()


def test_tokenize_pads_to_77_with_start_and_end(tokenizer):
    ids = T.tokenize(tokenizer, ["a photo of a cat", ""])
    assert ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == tokenizer.pad_token_id).all()
    assert ids[1, 0] == tokenizer.bos_token_id and ids[1, 1] == tokenizer.eos_token_id
    with pytest.raises(StableEmoteError, match="list"):
        T.tokenize(tokenizer, "a cat")


def test_token_table_rows(tokenizer):
    rows = T.token_table(tokenizer, "grinning face")
    assert rows[0] == (0, tokenizer.bos_token_id, "<|startoftext|>")
    assert rows[-1][1] == tokenizer.eos_token_id
    assert [p for p, _, _ in rows] == list(range(len(rows)))
    assert "face</w>" in [t for _, _, t in rows]
    assert len(T.token_table(tokenizer, "grinning face", include_padding=True)) == 77


def test_truncated_words(tokenizer):
    assert T.truncated_words(tokenizer, "smiling face") == ""
    long_prompt = " ".join(["cat"] * 75 + ["dog", "fish"])
    assert T.truncated_words(tokenizer, long_prompt) == "dog fish"


def test_encode_prompts_and_pooled(tokenizer, text_encoder):
    prompts = ["smiling face", "rocket", ""]
    hidden = T.encode_prompts(tokenizer, text_encoder, prompts)
    assert hidden.shape == (3, 77, TINY_TEXT_CONFIG["hidden_size"])
    pooled = T.pooled_embeddings(tokenizer, text_encoder, prompts)
    assert pooled.shape == (3, TINY_TEXT_CONFIG["hidden_size"])
    ids = T.tokenize(tokenizer, prompts)
    end = (ids == tokenizer.eos_token_id).int().argmax(dim=1)
    torch.testing.assert_close(pooled, hidden[torch.arange(3), end])
    # The start token sees nothing but itself (causal attention): same row for every prompt.
    torch.testing.assert_close(hidden[0, 0], hidden[1, 0])


def test_cosine_similarity_matrix():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    sim = T.cosine_similarity_matrix(x)
    expected = torch.tensor([[1, 0, 0.5**0.5], [0, 1, 0.5**0.5], [0.5**0.5, 0.5**0.5, 1]])
    torch.testing.assert_close(sim, expected)
    sim3 = T.cosine_similarity_matrix(torch.randn(4, 5, 6))
    assert sim3.shape == (4, 4)
    torch.testing.assert_close(sim3, sim3.T)
    with pytest.raises(StableEmoteError):
        T.cosine_similarity_matrix(torch.zeros(3))


def test_mix_embeddings():
    a, b = torch.zeros(1, 77, 8), torch.ones(1, 77, 8)
    torch.testing.assert_close(T.mix_embeddings(a, b, 0.0), a)
    torch.testing.assert_close(T.mix_embeddings(a, b, 1.0), b)
    torch.testing.assert_close(T.mix_embeddings(a, b, 0.25), torch.full((1, 77, 8), 0.25))
    with pytest.raises(StableEmoteError, match=r"\[0, 1\]"):
        T.mix_embeddings(a, b, 1.5)
    with pytest.raises(StableEmoteError, match="shapes"):
        T.mix_embeddings(a, torch.ones(1, 77, 9), 0.5)


def test_token_table_figure_is_reproducible(tmp_path, tokenizer):
    path = figures.figure_token_table(tmp_path / "tokens.png", tokenizer)
    assert path.stat().st_size > 5_000
    committed = IMAGES_DIR / "clip_token_table.png"
    if committed.exists():
        a = np.asarray(Image.open(path).convert("RGB"), float)
        b = np.asarray(Image.open(committed).convert("RGB"), float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0
