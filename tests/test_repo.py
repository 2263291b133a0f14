"""Repository-level checks: one repository slug everywhere, README commands, packaging."""

import re
import tomllib
from pathlib import Path

from stableemote_utils import REPO_SLUG

ROOT = Path(__file__).resolve().parent.parent
GITHUB_LINK = re.compile(
    r"github(?:\.com)?/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git|/blob|\"|\)|$)"
)


def _files_with_links():
    yield ROOT / "README.md"
    yield from sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_colab_badge_and_install_uses_the_one_slug():
    seen = 0
    for path in _files_with_links():
        for slug in GITHUB_LINK.findall(path.read_text()):
            seen += 1
            assert slug == REPO_SLUG, f"{path.name} links to {slug}, expected {REPO_SLUG}"
    assert seen >= 12  # README badges + each notebook's badge and install line


def test_readme_quick_start_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_no_torchvision_dependency_and_one_dependency_list():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    assert not [d for d in deps if d.lower().startswith("torchvision")]
    env = (ROOT / "environment.yml").read_text()
    assert '-e ".[dev]"' in env  # conda installs the same package, no second list
    for lib in ("diffusers", "transformers", "peft", "accelerate"):
        assert any(d.startswith(f"{lib}==") for d in project["dependencies"]), (
            f"{lib} is not pinned"
        )


def test_every_figure_in_the_readme_exists_and_is_made_by_code():
    from stableemote_utils.figures import all_figures

    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r"\(images/([^)]+\.png)\)", readme))
    assert shown, "the README shows figures"
    for name in shown:
        assert (ROOT / "images" / name).exists(), name
    made = set(all_figures())
    # results_* come from `stableemote quickstart --figures-dir images`, tinyemote_* from
    # `stableemote evaluate-tiny`, demo_* are screenshots `make test-browser` writes to
    # outputs/browser/: made by code too, but by commands that train or drive a browser.
    copied = ("results_", "tinyemote_", "demo_")
    missing = {n for n in shown if n not in made and not n.startswith(copied)}
    assert not missing, f"figures with no code that makes them: {missing}"


def test_library_code_never_switches_the_matplotlib_backend():
    """Switching to Agg inside a helper makes every later ``plt.show()`` in a notebook blank."""
    import ast

    offenders = []
    for path in sorted((ROOT / "stableemote_utils").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if node.func.attr == "switch_backend" or (
                node.func.attr == "use" and name in ("matplotlib", "mpl")
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"library code switches the matplotlib backend at {offenders}"


def test_figure_helpers_leave_the_learners_backend_alone(tmp_path):
    import matplotlib

    from stableemote_utils.figures import all_figures

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # stands in for a notebook's inline backend
    try:
        for name, make in all_figures().items():
            if name.startswith("dataset_") or name == "vae_latent_vs_pixel_cost.png":
                continue  # no matplotlib / 20 s of FLOP counting; the source scan above covers it
            make(tmp_path / name)
            assert matplotlib.get_backend() == "pdf", f"{name} switched the backend"
    finally:
        matplotlib.use(before)


def test_xdist_groups_keep_their_tests_on_one_worker(tmp_path):
    """make test relies on --dist loadgroup: a notebook's cells in one kernel, 05 before 06,
    the two-process tests one at a time. Some pytest / pytest-xdist pairs silently ignore the
    groups (pytest 9.2 with pytest-xdist 3.8); this fails on such a pair."""
    import os
    import subprocess
    import sys

    body = (
        "import os, pytest\n"
        "@pytest.mark.xdist_group('one')\n"
        "@pytest.mark.parametrize('i', range(6))\n"
        "def test_grouped(i):\n"
        "    with open('workers.txt', 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
    )
    (tmp_path / "test_a.py").write_text(body)
    (tmp_path / "test_b.py").write_text(body)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTEST_ADDOPTS": ""},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]
    workers = (tmp_path / "workers.txt").read_text().split()
    assert len(workers) == 12 and len(set(workers)) == 1, workers
