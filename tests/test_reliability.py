"""Runs that never lose or mix work, and every bad argument a one-line message (issue 14).

Most cases are one ``stableemote`` call under the tiny-random preset on a small
imagefolder made here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from stableemote_utils.cli.main import main
from stableemote_utils.data import is_heldout, load_emoji_dataset
from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import get_preset

HELDOUT_FRACTION = get_preset("tiny-random").heldout_fraction


def make_folder(folder, train_names=16, heldout_names=2, size_px=16):
    """An imagefolder of flat colour squares whose names give both splits."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"shape {i}" for i in range(400)]
    train = [n for n in names if not is_heldout(n, HELDOUT_FRACTION)][:train_names]
    held = [n for n in names if is_heldout(n, HELDOUT_FRACTION)][:heldout_names]
    rows = []
    for i, name in enumerate(train + held):
        colour = ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)
        Image.new("RGB", (size_px, size_px), colour).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": name}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def data(tmp_path, tiny_model_dir):
    return make_folder(tmp_path / "data")


def train_args(tmp_path, data, *extra, run="run"):
    return [
        "train",
        "--preset",
        "tiny-random",
        "--device",
        "cpu",
        "--dataset",
        str(data),
        "--output-dir",
        str(tmp_path / run),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--validate-every",
        "1000",
        "--learning-rate",
        "1e-3",
        *extra,
    ]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("stableemote: error:"), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------
# Every bad argument: exit code 2, one line naming the option, before any work
# ---------------------------------------------------------------------------

BAD_TRAIN_ARGS = [
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--learning-rate=-1e-4"], "--learning-rate"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--validate-every", "0"], "--validate-every"),
    (["--resolution", "60"], "--resolution"),
    (["--resolution", "0"], "--resolution"),
    (["--resolution=-64"], "--resolution"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu9"], "--device"),
    (["--caption-dropout", "5"], "--caption-dropout"),
    (["--max-train-examples", "-1"], "--max-train-examples"),
    (["--min-snr-gamma", "-1"], "--min-snr-gamma"),
    (["--stop-after", "-1"], "--stop-after"),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints"),
    (["--seed", "-1"], "--seed"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_TRAIN_ARGS, ids=lambda v: str(v))
def test_bad_train_argument_is_one_line_before_any_work(tmp_path, capsys, extra, option):
    # The dataset does not exist: reaching it would be "work", and a different message.
    code = main(train_args(tmp_path, tmp_path / "no-data", *extra))
    err = one_line_error(capsys)
    assert code == 2
    assert option in err
    assert not (tmp_path / "run").exists(), "nothing may be written before the check"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(train_args(tmp_path, tmp_path / "no-data", "--device", "cuda")) == 2
    assert "--device cuda" in one_line_error(capsys)


def test_the_python_api_checks_the_same_ranges(tmp_path):
    from stableemote_utils.training import recipe, train

    config = recipe("tiny-quick", output_dir=str(tmp_path / "run"), batch_size=0)
    with pytest.raises(StableEmoteError, match="--batch-size"):
        train(config)
    config = recipe("tiny-quick", output_dir=str(tmp_path / "run"), learning_rate=math.nan)
    with pytest.raises(StableEmoteError, match="--learning-rate"):
        train(config)


BAD_COMPARE_ARGS = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-3"], "--steps"),
    (["--guidance", "-5"], "--guidance"),
    (["--resolution", "60"], "--resolution"),
    (["--seeds", "0,-1"], "--seeds"),
    (["--device", "tpu9"], "--device"),
]


@pytest.mark.parametrize(("extra", "option"), BAD_COMPARE_ARGS, ids=lambda v: str(v))
def test_bad_compare_argument_is_one_line(tmp_path, capsys, extra, option):
    out = tmp_path / "cmp" / "grid.png"
    argv = ["compare", "--preset", "tiny-random", "--lora", str(tmp_path / "a"), "--out", str(out)]
    code = main([*argv, *extra])
    err = one_line_error(capsys)
    assert code == 2
    assert option in err
    assert not out.parent.exists()


def test_compare_python_api_refuses_zero_steps(tmp_path):
    from stableemote_utils.compare import fair_comparison

    with pytest.raises(StableEmoteError, match="--steps"):
        fair_comparison(None, tmp_path / "a", steps=0)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def test_a_dataset_without_a_heldout_split_is_one_line(tmp_path, capsys, tiny_model_dir):
    data = make_folder(tmp_path / "data", train_names=8, heldout_names=0)
    assert main(train_args(tmp_path, data)) == 2
    assert "held-out" in one_line_error(capsys)


def test_a_decompression_bomb_is_skipped_like_an_unreadable_image(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", train_names=19, heldout_names=1)
    Image.new("1", (300, 300)).save(data / "0.png")  # 90,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # bomb above 2 x 10,000
    examples = load_emoji_dataset(str(data), 16, split="all")
    assert len(examples) == 19
    assert "skipped unreadable image" in capsys.readouterr().err


def test_metadata_cannot_name_files_outside_the_dataset_folder(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    Image.new("RGB", (16, 16)).save(tmp_path / "secret.png")
    with open(data / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "../secret.png", "text": "escape"}) + "\n")
    assert main(train_args(tmp_path, data)) == 2
    err = one_line_error(capsys)
    assert "outside the dataset folder" in err and "line 19" in err
    (data / "metadata.jsonl").write_text(
        json.dumps({"file_name": str(tmp_path / "secret.png"), "text": "abs"}) + "\n"
    )
    with pytest.raises(StableEmoteError, match="outside the dataset folder"):
        load_emoji_dataset(str(data), 16, split="all")


def test_too_many_bad_images_names_no_option_the_cli_lacks(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    for png in data.glob("*.png"):
        png.write_bytes(b"not a png")
    with pytest.raises(StableEmoteError) as err:
        load_emoji_dataset(str(data), 16, split="all")
    assert "could not be read" in str(err.value)
    assert "max_bad_fraction" not in str(err.value)


def test_train_honours_stableemote_preset(tmp_path, monkeypatch):
    from stableemote_utils import training

    seen = {}

    def fake_train(config, resume=None, overwrite=False):
        seen["preset"] = config.preset
        return training.TrainResult(tmp_path, None, 0, [], {}, 0.0, True)

    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny-random")
    assert main(["train", "--output-dir", str(tmp_path / "run")]) == 0
    assert seen["preset"] == "tiny-random"
    assert main(["train", "--preset", "tiny", "--output-dir", str(tmp_path / "run")]) == 0
    assert seen["preset"] == "tiny"


# ---------------------------------------------------------------------------
# Adapters whose numbers are unusable
# ---------------------------------------------------------------------------


@pytest.fixture
def lora_file(tiny_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from stableemote_utils.lora import add_lora
    from stableemote_utils.lora_files import save_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    torch.manual_seed(0)
    add_lora(unet, rank=2, alpha=2)
    return save_lora(unet, tmp_path / "good", {"base_model": "tiny-random"})


def _rewrite(file, out, alpha=None, nan=False):
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = load_file(file)
    if nan:
        tensors = {k: torch.full_like(v, math.nan) for k, v in tensors.items()}
    if alpha is not None:
        metadata.pop("lora_adapter_metadata", None)
        metadata["alpha"] = str(alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata)
    return out


@pytest.mark.parametrize(
    ("kind", "words"), [("nan", "NaN or infinite"), ("alpha", "scales the update by")]
)
def test_unusable_adapters_are_flagged_by_inspect_and_refused_by_compare(
    lora_file, tmp_path, capsys, kind, words
):
    bad = _rewrite(
        lora_file,
        tmp_path / kind / "pytorch_lora_weights.safetensors",
        alpha=1e6 if kind == "alpha" else None,
        nan=kind == "nan",
    )
    assert main(["lora", "inspect", str(lora_file)]) == 0
    assert "UNUSABLE" not in capsys.readouterr().out
    assert main(["lora", "inspect", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "UNUSABLE" in out and words in out
    grid = tmp_path / "cmp" / "grid.png"
    code = main(["compare", "--preset", "tiny-random", "--device", "cpu", "--lora", str(bad),
                 "--steps", "2", "--out", str(grid)])  # fmt: skip
    assert code == 2
    assert words in one_line_error(capsys)
    assert not grid.exists()
