"""Every subcommand's ``--help``: it runs, every option says what it does, no "default: None"."""

from __future__ import annotations

import argparse

import pytest

from stableemote_utils.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(command words, its parser)`` for every subcommand, nested ones (``lora export``) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


COMMANDS = [words for words, _ in _commands(build_parser())]


def test_the_walk_finds_every_subcommand():
    for words in (("train",), ("compare",), ("lora", "export"), ("demo",), ("tiny-grid",)):
        assert words in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help_runs_and_every_option_has_help_and_no_none_default(words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*words, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "default: None" not in text
    assert "(default: False)" not in text
    parser = dict(_commands(build_parser()))[words]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help and action.help.strip(), f"{words} {action.option_strings} has no help"


def test_train_help_shows_the_recipes_and_presets_real_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert (
        "total optimizer steps (default: 4500; --recipe tiny-quick: 1500; --recipe tiny-xl-quick: "
        "1500; --recipe sdxl-t4: 500)" in text
    )
    assert (
        "(default: the preset's: 8 for sd15, 4 for tiny and tiny-random, 1 for sdxl; --recipe "
        "tiny-quick: 8; --recipe tiny-xl-quick: 8; --recipe sdxl-t4: 1)" in text
    )
    assert "(default: to_q, to_k, to_v, to_out.0; --recipe tiny-quick: down_blocks.0.*, " in text
    assert "(default: 0.0001; --recipe tiny-quick: 0.003; --recipe tiny-xl-quick: 0.003)" in text
    assert "first N" not in text and "seeded sample" in text  # what the code does
    for flag in ("--learning-rate", "--seed", "--report-to"):
        assert flag in text


def test_compare_takes_output_dir_and_still_takes_out_with_a_notice(capsys):
    parser = build_parser()
    args = parser.parse_args(["compare", "--lora", "x", "--output-dir", "some/folder"])
    from stableemote_utils.cli.common import output_path

    assert str(output_path(args, "comparison.png")) == "some/folder/comparison.png"
    assert capsys.readouterr().err == ""
    args = parser.parse_args(["compare", "--lora", "x", "--out", "old/grid.png"])
    assert str(output_path(args, "comparison.png")) == "old/grid.png"
    err = capsys.readouterr().err
    assert "--out is deprecated" in err and "--output-dir" in err and err.count("\n") == 1
