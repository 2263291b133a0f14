"""The checks notebooks 01, 02 and 07 give their exercises, and 02's hand-built text encoder.

Each exercise cell defines a check that the learner's answer goes through. Here, out of the
learner's view, each check is shown to reject a wrong answer and accept the right one, and
02's ``encode_by_hand`` is shown to equal ``last_hidden_state`` on a random text encoder. The
definitions are read from the notebooks themselves (``lesson_code.notebook_definition``).
"""

from __future__ import annotations

import math

import pytest
import torch
from lesson_code import NOTEBOOK_DIR, notebook_definition

from stableemote_utils import text as T
from stableemote_utils import vae as V
from stableemote_utils.tiny_model import TINY_TEXT_CONFIG, TINY_VAE_CONFIG


def notebook_function(notebook: str, name: str, **namespace):
    """The notebook's definition of ``name``, run with ``namespace`` as its globals."""
    namespace.setdefault("torch", torch)
    exec(notebook_definition(notebook, name), namespace)  # the notebook's own code, read by ast
    return namespace[name]


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE_CONFIG).eval()


@pytest.fixture(scope="module")
def text_parts():
    """SD 1.5's tokenizer and a random text encoder of the tiny preset's size."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return T.clip_tokenizer(), CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)).eval()


def pixels_of(size_px: int) -> torch.Tensor:
    return torch.rand(2, 3, size_px, size_px, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_01_exercise_2_check_rejects_the_wrong_comparison(tiny_vae):
    check = notebook_function(
        "01", "check_exercise_2", psnr=V.psnr, decode=V.decode, encode=V.encode
    )
    pixels = pixels_of(32)
    reconstruction = V.decode(
        tiny_vae, V.encode(tiny_vae, pixels, torch.Generator().manual_seed(0))
    )
    right = V.psnr(reconstruction, V.decode(tiny_vae, V.encode(tiny_vae, pixels, sample=False)))
    check(right, tiny_vae, pixels, reconstruction)
    with pytest.raises(AssertionError, match="mean vs sample"):
        check(V.psnr(pixels, reconstruction), tiny_vae, pixels, reconstruction)
    with pytest.raises(AssertionError, match="one PSNR per emoji"):
        check(right[:1], tiny_vae, pixels, reconstruction)


def test_01_exercise_3_check_wants_the_psnr_of_an_error_of_a_tenth():
    check = notebook_function("01", "check_exercise_3", psnr=V.psnr, pixels=pixels_of(8))
    check(10 * math.log10(2**2 / 0.1**2))  # 26.02 dB
    for wrong in (20.0, 10 * math.log10(1 / 0.1**2), 10 * math.log10(2 / 0.1)):
        with pytest.raises(AssertionError):
            check(wrong)


def test_01_exercise_4_check_wants_one_over_the_raw_latents_std():
    factor = 0.5
    scaled = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 3 * factor
    check = notebook_function("01", "check_exercise_4")
    right = 1 / (scaled / factor).std().item()  # about 1 / 3
    check(right, scaled, factor)
    for wrong in (factor, 1 / scaled.std().item(), (scaled / factor).std().item()):
        with pytest.raises(AssertionError, match="Not quite"):
            check(wrong, scaled, factor)


def test_02_truncation_check_wants_exactly_one_token_cut(text_parts):
    tokenizer, _ = text_parts
    check = notebook_function(
        "02", "check_truncation", tokenizer=tokenizer, truncated_words=T.truncated_words
    )
    words = ["cat"] * (tokenizer.model_max_length - 2)  # one token each: exactly fills the window
    check(" ".join([*words, "dog"]))
    rare = " ".join([*words, "supercalifragilistic"])  # one word cut, but five tokens
    for wrong in (" ".join(words), " ".join([*words, "dog", "fish"]), "An emoji of a cat", rare):
        with pytest.raises(AssertionError):
            check(wrong)


def test_02_pooled_row_check_wants_the_end_of_text_rows(text_parts):
    tokenizer, text_encoder = text_parts
    check = notebook_function("02", "check_pooled")
    ids = T.tokenize(tokenizer, ["An emoji of red heart", "rocket"])
    with torch.no_grad():
        outputs = text_encoder(ids)
    rows = outputs.last_hidden_state
    check(rows[torch.arange(2), ids.argmax(dim=-1)], outputs)  # the end-of-text token's rows
    for wrong in (rows[:, -1], rows[:, 0], rows[torch.arange(2), ids.argmax(dim=-1) - 1]):
        with pytest.raises(AssertionError):
            check(wrong, outputs)


def test_02_causal_mask_lets_each_row_see_itself_and_the_past():
    causal_mask = notebook_function("02", "causal_mask")
    mask = causal_mask(5, torch.float32)
    assert mask.shape == (1, 1, 5, 5)
    may_look = mask[0, 0] == 0
    assert torch.equal(may_look, torch.ones(5, 5, dtype=torch.bool).tril())
    assert (mask[0, 0][~may_look] == torch.finfo(torch.float32).min).all()


def test_02_encode_by_hand_equals_the_text_encoder(text_parts):
    tokenizer, text_encoder = text_parts
    causal_mask = notebook_function("02", "causal_mask")
    encode_vectors = notebook_function(
        "02", "encode_vectors", causal_mask=causal_mask, text_encoder=text_encoder
    )
    encode_by_hand = notebook_function(
        "02", "encode_by_hand", encode_vectors=encode_vectors, text_encoder=text_encoder
    )
    ids = T.tokenize(tokenizer, ["An emoji of cat face", "rocket"])
    with torch.no_grad():
        expected = text_encoder(ids).last_hidden_state
        ours = encode_by_hand(ids)
    assert torch.allclose(ours, expected, atol=1e-5)
    # Without the mask the rows would see the future: the prompt's rows would differ.
    with torch.no_grad():
        unmasked_vectors = notebook_function(
            "02",
            "encode_vectors",
            causal_mask=lambda n, dtype: torch.zeros(1, 1, n, n, dtype=dtype),
            text_encoder=text_encoder,
        )
        unmasked = notebook_function(
            "02", "encode_by_hand", encode_vectors=unmasked_vectors, text_encoder=text_encoder
        )(ids)
    assert not torch.allclose(unmasked[:, :3], expected[:, :3], atol=1e-3)


def notebook_07_exercise_check(number: int) -> str:
    """The Python expression in backticks after exercise ``number``'s "*Check:*" in 07."""
    import re

    import nbformat

    path = next(NOTEBOOK_DIR.glob("07_*.ipynb"))
    cell = next(
        c
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "markdown" and c.source.startswith("## 6. Exercises")
    )
    exercise = re.search(rf"^{number}\. (.*?)(?=^\d\. |\Z)", cell.source, re.M | re.S)
    assert exercise is not None, f"07 has no exercise {number}"
    found = re.search(r"\*Check:\* `([^`]+)`", exercise.group(1))
    assert found is not None, f"07's exercise {number} gives no check in backticks"
    return found.group(1)


def test_07_exercise_1_check_runs_on_encoder_1_and_holds(text_parts):
    """Exercise 1's check, as written, runs on a ``CLIPTextModel`` (the class of SDXL's
    encoder 1) and holds for its last layer, not for its penultimate one."""
    from types import SimpleNamespace

    tokenizer, text_encoder = text_parts
    check = notebook_07_exercise_check(1)
    ids = T.tokenize(tokenizer, ["An emoji of smiling cat"])
    with torch.no_grad():
        out = text_encoder(ids, output_hidden_states=True)
        pipe = SimpleNamespace(text_encoder=text_encoder)
        assert eval(check, {"torch": torch, "pipe": pipe, "out": out}) is True
        # the same check on the penultimate layer (what SDXL reads) must fail
        penultimate = SimpleNamespace(
            hidden_states=out.hidden_states[:-1], last_hidden_state=out.last_hidden_state
        )
        assert eval(check, {"torch": torch, "pipe": pipe, "out": penultimate}) is False


def test_07_exercise_2_rank_8_is_twice_rank_4():
    """Exercise 2's answer with the notebook's own ``lora_parameters`` on SDXL's UNet."""
    from diffusers import UNet2DConditionModel

    from stableemote_utils.tiny_model import sdxl_config

    lora_parameters = notebook_function("07", "lora_parameters")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sdxl_config("unet"))
    assert lora_parameters(unet) == 5_806_080
    assert lora_parameters(unet, rank=8) == 2 * 5_806_080
