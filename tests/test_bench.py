from stableemote_utils.bench import format_table, run_bench


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
