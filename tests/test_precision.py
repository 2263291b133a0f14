import pytest
import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.precision import choose_dtype, dtype_name


def test_t4_gets_fp16():
    dtype, reason = choose_dtype("cuda", capability=(7, 5))
    assert dtype == torch.float16
    assert "7.5" in reason and "fp16" in reason


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_ampere_and_newer_get_bf16(capability):
    dtype, reason = choose_dtype("cuda", capability=capability)
    assert dtype == torch.bfloat16
    assert "bf16" in reason


def test_cpu_gets_fp32():
    dtype, reason = choose_dtype("cpu")
    assert dtype == torch.float32
    assert "cpu" in reason


def test_override_wins_and_is_explained():
    dtype, reason = choose_dtype("cuda", override="fp32", capability=(7, 5))
    assert dtype == torch.float32
    assert "explicitly" in reason
    assert choose_dtype("cpu", override=torch.bfloat16)[0] == torch.bfloat16


def test_unknown_override_is_a_clear_error():
    with pytest.raises(StableEmoteError, match="fp32, fp16, bf16"):
        choose_dtype("cpu", override="fp8")


def test_dtype_names():
    assert [dtype_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == [
        "fp32",
        "fp16",
        "bf16",
    ]
