"""environment.yml installs what `make install` installs (conda itself is not on CI's machines)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stableemote_utils import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _makefile_install() -> tuple[str, str, str]:
    """(constraints file, editable requirement, vocabulary wheel pin) from the Makefile."""
    text = (ROOT / "Makefile").read_text()
    constraints = re.search(r"^CONSTRAINTS \?= (\S+)", text, re.MULTILINE).group(1)
    open_clip = re.search(r"^OPEN_CLIP := (\S+)", text, re.MULTILINE).group(1)
    stamp_rule = text[text.index("$(STAMP):") : text.index("install: $(STAMP)")]
    editable = re.search(r'pip install -q -c \$\(CONSTRAINTS\) -e "([^"]+)"', stamp_rule).group(1)
    assert "--no-deps $(OPEN_CLIP)" in stamp_rule
    return constraints, editable, open_clip


def test_environment_file_installs_what_make_install_installs():
    constraints, editable, open_clip = _makefile_install()
    text = (ROOT / "environment.yml").read_text()
    env = yaml.safe_load(text)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == [f"-c {constraints}", f'-e "{editable}"'], pip
    # The step a conda pip list cannot express is named, with the same pin the package fetches.
    assert open_clip == tiny_model._OPEN_CLIP_PIN
    assert f"pip install --no-deps {open_clip}" in text


def test_the_python_version_is_one_the_package_supports():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    major, minor = (int(x) for x in python.split("=")[1].split(".")[:2])
    text = (ROOT / "pyproject.toml").read_text()
    low = re.search(r'requires-python = ">=(\d+)\.(\d+)"', text)
    assert (major, minor) >= (int(low.group(1)), int(low.group(2)))
