"""``stableemote lora inspect`` and ``stableemote lora export``."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stableemote_utils import lora as L
from stableemote_utils import lora_files as LF
from stableemote_utils.cli.lora import add_lora_commands
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.lora_inspect import LAYOUT_NAMES


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stableemote")
    add_lora_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def run(argv: list[str]) -> None:
    args = parse(argv)
    args.func(args)


@pytest.fixture
def adapter(tiny_components, tmp_path):
    """A rank-2, alpha-1 adapter file for the tiny UNet."""
    unet = copy.deepcopy(tiny_components.unet)
    torch.manual_seed(0)
    n = L.add_lora(unet, rank=2, alpha=1)
    return LF.save_lora(unet, tmp_path / "adapter", {"base_model": "tiny"}), n


def test_inspect_prints_rank_alpha_targets_count_dtype_and_fit(adapter, capsys):
    file, n = adapter
    run(["lora", "inspect", str(file.parent)])
    out = capsys.readouterr().out
    lines = {line.split(None, 1)[0]: line for line in out.splitlines() if line.strip()}
    assert lines["rank"].split()[-1] == "2"
    assert lines["alpha"].split()[-1] == "1.0"
    assert "to_k, to_out.0, to_q, to_v" in lines["target"]
    assert lines["parameters"].split()[-1] == f"{n:,}"
    assert lines["dtype"].split()[-1] == "float32"
    fits = out.split("fits\n")[1]
    assert "SD 1.x UNet (SD 1.5 layout)   no - " in fits
    line = next(ln for ln in fits.splitlines() if "the random tiny model (tiny-random)" in ln)
    assert line.split()[-1] == "yes"
    assert "base_model=tiny" in out


def test_inspect_refuses_a_missing_or_bad_file(tmp_path):
    with pytest.raises(StableEmoteError, match="does not exist"):
        run(["lora", "inspect", str(tmp_path / "missing.safetensors")])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(StableEmoteError, match="is not a safetensors file"):
        run(["lora", "inspect", str(bad)])


def test_inspect_reports_an_adapter_that_fits_nothing(tmp_path, capsys):
    file = tmp_path / "odd.safetensors"
    save_file({"unet.no_such.layer.lora_A.weight": torch.zeros(2, 3)}, str(file))
    run(["lora", "inspect", str(file)])
    out = capsys.readouterr().out
    assert out.count("no - ") == len(LAYOUT_NAMES) and "0 of 1 keys matched" in out


def test_export_writes_kohya_keys(adapter, tmp_path, capsys):
    file, n = adapter
    out_file = tmp_path / "emoji_kohya.safetensors"
    run(["lora", "export", str(file), str(out_file), "--format", "kohya", "--dtype", "fp16"])
    assert str(out_file) in capsys.readouterr().out
    with safe_open(str(out_file), framework="pt") as f:
        keys = list(f.keys())
        weights = [f.get_tensor(k) for k in keys if not k.endswith(".alpha")]
    assert all(k.startswith("lora_unet_") for k in keys)
    assert {
        k.rsplit(".", 1)[-1] if k.endswith(".alpha") else ".".join(k.rsplit(".", 2)[-2:])
        for k in keys
    } == {
        "alpha",
        "lora_down.weight",
        "lora_up.weight",
    }
    assert sum(w.numel() for w in weights) == n
    assert all(w.dtype == torch.float16 for w in weights)


def test_export_refuses_bad_arguments(adapter, tmp_path):
    file, _ = adapter
    with pytest.raises(SystemExit):
        parse(["lora", "export", str(file), str(tmp_path / "x.safetensors"), "--format", "ckpt"])
    with pytest.raises(StableEmoteError, match="must end in .safetensors"):
        run(["lora", "export", str(file), str(tmp_path / "x.pt")])
