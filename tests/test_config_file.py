"""``stableemote train --config``: read, override, write, and repeat a run bit for bit."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stableemote_utils.cli.main import build_parser, main
from stableemote_utils.cli.train import train_config
from stableemote_utils.config_file import read_config_file, write_config_file
from stableemote_utils.training_config import recipe

README = Path(__file__).resolve().parents[1] / "README.md"


def _config(tmp_path, text: str, *flags: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return train_config(build_parser().parse_args(["train", "--config", str(path), *flags]))


def test_flags_override_the_file_and_the_file_overrides_recipe_and_environment(tmp_path):
    text = 'recipe = "tiny-quick"\npreset = "tiny-random"\nsteps = 3\nrank = 2\nresolution = 32\n'
    config = _config(tmp_path, text, "--rank", "8")
    assert (config.steps, config.rank, config.resolution_px) == (3, 8, 32)
    assert config.preset == "tiny-random"  # over $STABLEEMOTE_PRESET (tiny in the tests)
    assert config.learning_rate == recipe("tiny-quick").learning_rate
    config = _config(tmp_path, text, "--recipe", "original")
    assert config.learning_rate == recipe("original").learning_rate and config.steps == 3


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("stepz = 3\n", ["unknown key 'stepz'"]),
        ('steps = "many"\n', ["'steps' must be a whole number", "'many'"]),
        ("steps = 2.5\n", ["'steps' must be a whole number"]),
        ("learning_rate = true\n", ["'learning_rate' must be a number"]),
        ('validation_prompts = "cat"\n', ["'validation_prompts' must be a list of texts"]),
        ("steps = \n", ["not valid TOML"]),
        ("steps = 3\nsteps = 4\n", ["not valid TOML"]),
        ("resolution = 64\nresolution_px = 32\n", ["sets resolution_px a second time"]),
        ('recipe = "fast"\n', ["'recipe' must be one of original, tiny-quick"]),
    ],
)
def test_a_bad_file_is_refused_in_one_line_naming_the_key(tmp_path, capsys, text, words):
    (tmp_path / "run.toml").write_text(text)
    code = main(["train", "--config", str(tmp_path / "run.toml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err
    assert not (tmp_path / "outputs").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_written_file_reads_back_to_the_same_settings(tmp_path):
    config = recipe(
        "tiny-quick", trigger_word="sks", validation_prompts=("a", "b, c"), learning_rate=3e-4
    )
    path = write_config_file(config, tmp_path)
    _, settings = read_config_file(path)
    assert recipe("original", **settings) == config


def test_the_readme_example_file_is_accepted(tmp_path):
    section = README.read_text().split("## Train on your own pictures", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    (tmp_path / "run.toml").write_text(example)
    _, settings = read_config_file(tmp_path / "run.toml")
    assert settings and tomllib.loads(example)


@pytest.mark.slow
def test_config_toml_repeats_the_run_bit_for_bit(tmp_path, capsys, short_run):
    first = tmp_path / "first"
    argv = short_run.argv(first, "--trigger-word", "zq", "--noise-offset", "0.05", steps=2)
    assert main(argv) == 0, capsys.readouterr().err
    again = tmp_path / "again"
    argv = ["train", "--config", str(first / "config.toml"), "--output-dir", str(again)]
    assert main(argv) == 0, capsys.readouterr().err
    a = load_file(first / "pytorch_lora_weights.safetensors")
    b = load_file(again / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    settings = [tomllib.loads((d / "config.toml").read_text()) for d in (first, again)]
    assert settings[0].pop("output_dir") == str(first)
    assert settings[1].pop("output_dir") == str(again)
    assert settings[0] == settings[1]
    assert settings[0]["trigger_word"] == "zq" and settings[0]["precision"] == "fp32"
