"""``--gradient-accumulation-steps``: batch 4 x 2 slices makes the update batch 8 makes.

The update is compared under plain SGD (AdamW is swapped out for the test): Adam's first
step is about ``lr * sign(gradient)``, which would hide a gradient off by any factor.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from stableemote_utils.training import train

BATCH = 8


@pytest.fixture
def sgd(monkeypatch):
    """``torch.optim.AdamW`` -> SGD at the same learning rate: the update is ``-lr * grad``."""
    monkeypatch.setattr(
        torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr)
    )


def _one_step(tmp_path, short_run, name: str, batch: int, slices: int, **overrides):
    config = short_run.config(
        tmp_path / name,
        steps=1,
        batch_size=batch,
        gradient_accumulation_steps=slices,
        max_grad_norm=None,  # clipping to norm 1 would hide a gradient's scale
        lr_warmup_steps=0,
        learning_rate=1.0,  # the update is the gradient itself
        max_train_examples=16,
        **overrides,
    )
    weights = load_file(train(config).adapter_path)
    # LoRA's B starts at zero, so after one SGD step B is -lr * its gradient.
    return {k: v for k, v in weights.items() if "lora_B" in k}


@pytest.mark.parametrize("min_snr_gamma", [None, 5.0], ids=["plain", "min-snr"])
def test_batch_4_times_2_makes_the_update_of_batch_8(tmp_path, short_run, sgd, min_snr_gamma):
    kw = {"min_snr_gamma": min_snr_gamma}
    whole = _one_step(tmp_path, short_run, "b8", BATCH, 1, **kw)
    sliced = _one_step(tmp_path, short_run, "b4x2", BATCH // 2, 2, **kw)
    scale = max(v.abs().max().item() for v in whole.values())
    assert scale > 0
    # Tolerance: both compute the same sum of 8 per-example gradients in fp32; slicing only
    # regroups it (1/8 = 1/4 * 1/2 is exact in binary). A regrouped sum of B terms moves by
    # at most about B * eps * its size, and the batched kernels may regroup each example's
    # own reduction once more: B * B * eps * max|update|. (Measured: 4 to 8 eps * max.)
    tolerance = BATCH * BATCH * torch.finfo(torch.float32).eps * scale
    for key in whole:
        torch.testing.assert_close(sliced[key], whole[key], atol=tolerance, rtol=0)
    # The check can fail: half the batch alone (different data) is far outside it.
    half = _one_step(tmp_path, short_run, "b4", BATCH // 2, 1, **kw)
    assert max((half[k] - whole[k]).abs().max().item() for k in whole) > 1000 * tolerance


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_accumulation_resumes_to_the_same_weights(tmp_path, short_run):
    def config(name, **kw):
        return short_run.config(
            tmp_path / name, steps=2, batch_size=2, gradient_accumulation_steps=2, **kw
        )

    straight = train(config("straight"))
    train(config("resumed", stop_after_steps=1))
    resumed = train(config("resumed"), resume="latest")
    a, b = load_file(straight.adapter_path), load_file(resumed.adapter_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == straight.losses and len(resumed.losses) == 2


def test_accumulation_steps_below_one_is_refused(tmp_path, short_run):
    from stableemote_utils.errors import StableEmoteError

    with pytest.raises(StableEmoteError, match="--gradient-accumulation-steps"):
        train(short_run.config(tmp_path / "run", gradient_accumulation_steps=0))
