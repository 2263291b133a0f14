"""One repository, one release: pyproject's URL and version drive every badge and install cell."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nbformat

import stableemote_utils

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BADGE = re.compile(r"colab\.research\.google\.com/github/([^)\s\"']+?)/notebooks/([\w.-]+\.ipynb)")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _release() -> tuple[str, str, str]:
    """(repository URL, owner/name, release tag) from pyproject.toml."""
    project = _project()
    url = project["urls"]["Repository"]
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    assert match, f"[project.urls] Repository should be a GitHub URL, not {url!r}"
    return url, match.group(1), "v" + project["version"]


def _install_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if c.cell_type == "code")


def test_the_package_names_the_same_repository_and_version():
    _, slug, tag = _release()
    assert slug == stableemote_utils.REPO_SLUG
    assert "v" + stableemote_utils.__version__ == tag


def test_every_install_cell_pins_the_release_and_prefers_a_checkout():
    url, _, tag = _release()
    assert len(NOTEBOOKS) >= 6
    for path in NOTEBOOKS:
        cell = _install_cell(path)
        installs = re.findall(r"%pip install -q \"stableemote @ git\+(\S+?)\"", cell)
        assert installs == [f"{url}.git@{tag}"], f"{path.name}: {installs}"
        # A checkout of the repository is used as it is, before any install.
        assert cell.index('"stableemote_utils").is_dir()') < cell.index("%pip install")
        assert "google.colab" in cell


def test_every_colab_badge_opens_the_release_of_its_own_notebook():
    _, slug, tag = _release()
    readme = (ROOT / "README.md").read_text()
    badges = BADGE.findall(readme)
    assert sorted(name for _, name in badges) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        own = BADGE.findall(path.read_text())
        assert own and {name for _, name in own} == {path.name}, path.name
        badges += own
    for where, _ in badges:
        assert where == f"{slug}/blob/{tag}", where


def test_the_install_cell_uses_the_checkout_it_runs_in(tmp_path, monkeypatch):
    """Run the cell's Python (the %pip line is IPython syntax and is not reached here)."""
    cell = _install_cell(NOTEBOOKS[0])
    code = "\n".join("    pass" if "%pip" in line else line for line in cell.splitlines())
    inside = ROOT / "notebooks"
    monkeypatch.chdir(inside)
    namespace: dict = {}
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(code, "install-cell", "exec"), namespace)
    assert namespace["checkout"] == ROOT and sys.path[0] == str(ROOT)
    monkeypatch.chdir(tmp_path)  # outside any checkout: nothing to use
    exec(compile(code, "install-cell", "exec"), namespace)
    assert namespace["checkout"] is None
