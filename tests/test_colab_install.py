"""The Colab entry: every badge and install cell names what is published, the branch ``main``.

Only ``main`` reaches the public repository (no tags, no other branches), so a badge or an
install cell that names anything else opens a 404 or fails to install. pyproject.toml's
``[project.urls]`` names the repository once; the version there is the one each notebook's
first cell checks the installed package against.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

import stableemote_utils

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BADGE = re.compile(r"colab\.research\.google\.com/github/([^)\s\"']+?)/notebooks/([\w.-]+\.ipynb)")
BRANCH = "main"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _repository() -> tuple[str, str]:
    """(repository URL, owner/name) from pyproject.toml."""
    url = _project()["urls"]["Repository"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    assert match, f"[project.urls] Repository should be a GitHub URL, not {url!r}"
    return url, match.group(1)


def install_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if c.cell_type == "code")


def test_the_package_names_the_same_repository_and_version():
    _, slug = _repository()
    assert slug == stableemote_utils.REPO_SLUG
    assert stableemote_utils.__version__ == _project()["version"]


def test_every_install_cell_installs_main_and_checks_the_version():
    url, _ = _repository()
    assert len(NOTEBOOKS) == 7
    for path in NOTEBOOKS:
        cell = install_cell(path)
        installs = re.findall(r"%pip install -q \"stableemote(\[[\w,]+\])? @ git\+(\S+?)\"", cell)
        assert installs == [("[demo]", f"{url}.git@{BRANCH}")], f"{path.name}: {installs}"
        # A checkout of the repository is used as it is, before any install.
        assert cell.index('"stableemote_utils").is_dir()') < cell.index("%pip install")
        assert "google.colab" in cell
        assert f'COURSE_VERSION = "{_project()["version"]}"' in cell, path.name


def test_the_install_extras_exist_in_pyproject():
    extras = _project()["optional-dependencies"]
    for path in NOTEBOOKS:
        for extra in re.findall(r"stableemote\[([\w,]+)\] @", install_cell(path)):
            assert set(extra.split(",")) <= set(extras), path.name


def test_every_colab_badge_opens_its_own_notebook_on_main():
    _, slug = _repository()
    readme = (ROOT / "README.md").read_text()
    badges = BADGE.findall(readme)
    assert sorted(name for _, name in badges) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        own = BADGE.findall(path.read_text())
        assert own and {name for _, name in own} == {path.name}, path.name
        badges += own
    for where, _ in badges:
        assert where == f"{slug}/blob/{BRANCH}", where


def test_nothing_names_a_tag():
    tag = re.compile(r"@v\d|blob/v\d|tree/v\d")
    for path in [*NOTEBOOKS, ROOT / "README.md"]:
        assert not tag.search(path.read_text()), path.name


def _runnable(cell: str) -> str:
    """The cell's Python: the %pip line is IPython syntax and stands for an install."""
    return "\n".join(
        line.replace(line.strip(), "pass") if line.strip().startswith("%pip") else line
        for line in cell.splitlines()
    )


def test_the_install_cell_uses_the_checkout_it_runs_in(tmp_path, monkeypatch):
    code = _runnable(install_cell(NOTEBOOKS[0]))
    monkeypatch.chdir(ROOT / "notebooks")
    monkeypatch.setattr(sys, "path", list(sys.path))
    namespace: dict = {}
    exec(compile(code, "install-cell", "exec"), namespace)
    assert namespace["checkout"] == ROOT and sys.path[0] == str(ROOT)
    monkeypatch.chdir(tmp_path)  # outside any checkout: nothing to use
    exec(compile(code, "install-cell", "exec"), namespace)
    assert namespace["checkout"] is None


def test_the_install_cell_stops_an_older_install_in_one_line(tmp_path, monkeypatch):
    """A reused runtime with another version installed: one line that says what to do."""
    code = _runnable(install_cell(NOTEBOOKS[0]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stableemote_utils, "__version__", "0.2.0")
    with pytest.raises(RuntimeError) as err:
        exec(compile(code, "install-cell", "exec"), {})
    message = str(err.value)
    assert "\n" not in message
    assert "0.2.0 is installed" in message and "--force-reinstall" in message
    assert f"@{BRANCH}" in message and "restart" in message
