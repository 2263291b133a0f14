import pytest

from stableemote_utils.bench import format_table, run_bench


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_bench_measures_both_recipes_on_the_same_batch():
    rows = run_bench("tiny", "cpu", batch_size=2, steps=2, warmup=1)
    names = [r.setting for r in rows]
    assert names[0].startswith("original") and names[-1].startswith("ours")
    assert rows[0].precision == "bf16"  # the original recipe's precision
    assert rows[-1].precision == "fp32"  # the policy's choice on CPU
    assert all(r.seconds_per_step > 0 and r.peak_memory_mb > 0 for r in rows)
    assert rows[0].ratio_to_original == 1.0
    expected = rows[0].seconds_per_step / rows[-1].seconds_per_step
    assert abs(rows[-1].ratio_to_original - expected) < 1e-9
    table = format_table(rows, "cpu", 2, 64)
    assert "s/step" in table and "ours" in table and "x" in table.splitlines()[-1]


def test_table_gives_images_per_second():
    from stableemote_utils.bench import BenchRow

    table = format_table([BenchRow("ours", "fp16", 0.5, 100.0, 1.0)], "cuda", 8, 256)
    header, row = table.splitlines()[1:]
    assert "images/s" in header
    assert "16.00" in row.split()  # batch 8 / 0.5 s per step


def test_flops_of_a_full_size_step_match_sd15s_known_costs():
    from stableemote_utils.bench import (
        H100_BF16_DENSE_TFLOPS,
        T4_FP16_TFLOPS,
        count_step_flops,
        format_flops_table,
    )

    original, ours = count_step_flops(batch_size=1, resolution_px=256)
    unet_forward = ours.unet_forward_backward / 2  # frozen weights: backward ~ one forward
    assert 170e9 < unet_forward < 190e9  # ~180 GFLOPs per image at 256 px
    assert 1.4 < original.vae_encoder / unet_forward < 1.6  # the encoder costs ~1.5 forwards
    assert ours.vae_encoder == ours.text_encoder == 0
    assert original.unet_forward_backward == ours.unet_forward_backward
    table = format_flops_table([original, ours], 1, 256)
    floor_ms = ours.total / (T4_FP16_TFLOPS * 1e12) * 1e3
    assert f"{floor_ms:.1f} ms" in table.splitlines()[-2]
    assert f"{ours.total / (H100_BF16_DENSE_TFLOPS * 1e12) * 1e3:.2f} ms" in table


def test_memory_column_only_where_it_tells_the_recipes_apart():
    from stableemote_utils.bench import BenchRow

    rows = [
        BenchRow("original", "bf16", 0.4, 900.0, 1.0),
        BenchRow("ours", "fp16", 0.2, 500.0, 2.0),
    ]
    gpu = format_table(rows, "cuda", 8, 256).splitlines()
    assert "peak GPU MB" in gpu[1]
    assert [line.split()[-2] for line in gpu[2:]] == ["900", "500"]  # each recipe's own peak
    cpu = format_table(rows, "cpu", 8, 256).splitlines()
    assert "peak" not in cpu[1] and all("900" not in line for line in cpu)  # process RSS: no column


@pytest.mark.slow  # moved out of make test's time budget; test-slow runs it
def test_sdxl_step_counts_both_encoders_and_its_memory_on_paper():
    """SDXL on the meta device at 256 px (the sdxl preset's report counts 1024 px)."""
    from stableemote_utils.bench import count_step_flops, training_memory_gb

    checkpointed = training_memory_gb(256)
    plain = training_memory_gb(256, gradient_checkpointing=False)
    assert checkpointed["weights"] == plain["weights"] == 2 * 2_567_463_684 / 1e9  # fp16 UNet
    assert checkpointed["lora"] == 16 * 5_806_080 / 1e9  # fp32 weights, gradients, 2 moments
    assert 0 < checkpointed["activations"] < plain["activations"] / 4
    original, ours = count_step_flops(1, 256, family="sdxl", gradient_checkpointing=True)
    sd15_text = count_step_flops(1, 256)[0].text_encoder
    assert original.text_encoder > 5 * sd15_text  # two encoders, the second a bigG
    assert original.vae_encoder > 0 and ours.vae_encoder == ours.text_encoder == 0
    assert original.unet_forward_backward == ours.unet_forward_backward
