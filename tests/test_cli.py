import subprocess
import sys
from pathlib import Path

import pytest

from stableemote_utils.cli.main import main


def test_info_prints_versions_device_precision_and_preset(capsys, monkeypatch):
    monkeypatch.setenv("STABLEEMOTE_PRESET", "tiny")
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "diffusers", "transformers", "peft", "accelerate"):
        assert word in out
    assert "device       cpu" in out
    assert "precision    fp32" in out
    assert "preset       tiny" in out


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--dataset",
            str(tmp_path / "missing"),
            "--output-dir",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("stableemote: error:")
    assert "Traceback" not in err


def test_compare_without_an_adapter_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["compare"])  # --lora is required: argparse explains and exits
    assert "--lora" in capsys.readouterr().err


def test_console_command_is_installed():
    exe = Path(sys.executable).parent / "stableemote"
    proc = subprocess.run(
        [str(exe), "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for option in ("--resume", "--report-to", "--push-to-hub", "--rank", "--batch-size", "--steps"):
        assert option in proc.stdout
