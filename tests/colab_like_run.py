"""A Colab-like run: install the course the way a notebook's first cell does, then run 01.

``make test-colab`` (and CI) runs this file. In a fresh virtual environment, with only what
Colab has before the course is installed (a kernel, torch), it installs the package from a
git URL with the extras the install cell names, the checkout's own ``file://`` URL standing
in for GitHub. A stand-in ``google.colab`` module (``userdata``, ``drive``) sits on the
kernel's path, and notebook 01 runs top to bottom from a folder outside the checkout, its
install cell pointed at the same URL. This catches package data missing from the wheel,
imports that only work inside the checkout, and an install cell that drifted from
pyproject.toml; the tests in tests/ run inside the checkout and see none of these.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_vae_latents.ipynb"
VENV = ROOT / ".venv-colab"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
# What a Colab runtime has before the first cell runs (torch comes through the constraints).
PREINSTALLED = ["torch", "ipykernel", "nbclient", "nbformat"]
INSTALL = re.compile(r'%pip install -q "(stableemote(?:\[[\w,]+\])?) @ git\+(\S+?)@(\w+)"')

COLAB_STANDIN = {
    "__init__.py": '"""A stand-in for Colab\'s module, for the Colab-like run."""\n',
    "userdata.py": (
        "class SecretNotFoundError(KeyError):\n    pass\n\n\n"
        "def get(name):\n    raise SecretNotFoundError(name)\n"
    ),
    "drive.py": (
        "from pathlib import Path\n\n\n"
        "def mount(path, force_remount=False):\n"
        "    Path(path, 'MyDrive').mkdir(parents=True, exist_ok=True)\n"
    ),
}


def run(*cmd: str | Path, **kwargs) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def install_spec() -> tuple[str, str, str]:
    """(requirement with extras, repository URL, branch) from notebook 01's install cell."""
    import nbformat

    cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    found = INSTALL.search(cell.source)
    if not found:
        sys.exit(
            f"no '%pip install \"stableemote @ git+...\"' line in {NOTEBOOK.name}'s first cell"
        )
    return found.group(1), found.group(2), found.group(3)


def prepare(work: Path, url: str) -> Path:
    """Notebook 01, its install cell pointed at ``url``, and the stand-in Colab module."""
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    first = next(c for c in notebook.cells if c.cell_type == "code")
    first.source = INSTALL.sub(
        lambda m: f'%pip install -q "{m.group(1)} @ git+{url}@{m.group(3)}"', first.source
    )
    path = work / NOTEBOOK.name
    nbformat.write(notebook, path)
    colab = work / "colab-standin" / "google" / "colab"
    colab.mkdir(parents=True)
    for name, text in COLAB_STANDIN.items():
        (colab / name).write_text(text)
    # Colab's kernel has google.colab imported before the first cell; Python imports a
    # sitecustomize module on its path at start-up, so the stand-in is imported the same way.
    (colab.parent.parent / "sitecustomize.py").write_text("import google.colab  # noqa: F401\n")
    return path


def execute(path: Path) -> None:
    """Run in the fresh environment (``--execute``): the notebook, from its own folder."""
    from notebook_outputs import execute as run_notebook
    from notebook_outputs import text_of

    notebook, error = run_notebook(path, env=dict(os.environ), cwd=path.parent)
    if error is not None:
        sys.exit(f"{path.name} failed in the Colab-like environment:\n{error}")
    printed = "".join(
        text_of(o["text"]) for c in notebook.cells for o in c.get("outputs", []) if "text" in o
    )
    assert "preset:    tiny" in printed, printed[:2000]
    print(f"{path.name} ran top to bottom in the Colab-like environment")


def main() -> int:
    requirement, repository, branch = install_spec()
    url = f"file://{ROOT}"
    shutil.rmtree(VENV, ignore_errors=True)
    run(sys.executable, "-m", "venv", VENV)
    python = VENV / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")  # Colab's pip is current
    run(python, "-m", "pip", "install", "-q", "-c", CONSTRAINTS, *PREINSTALLED)
    # The install cell's line, with the checkout standing in for the repository.
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        CONSTRAINTS,
        f"{requirement} @ git+{url}@{branch}",
    )
    print(f"installed {requirement} from {url}@{branch} (the notebook names {repository})")
    with tempfile.TemporaryDirectory(prefix="colab-like-") as tmp:
        work = Path(tmp)
        notebook = prepare(work, url)
        env = dict(os.environ, STABLEEMOTE_PRESET="tiny", PYTHONPATH=str(work / "colab-standin"))
        env["STABLEEMOTE_CACHE"] = str(work / "cache")
        run(python, __file__, "--execute", notebook, cwd=work, env=env)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--execute"]:
        execute(Path(sys.argv[2]))
    else:
        sys.exit(main())
