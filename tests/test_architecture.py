"""The package's layers: no import cycles, no import from a lower layer up to a higher one.

Every import of a ``stableemote_utils`` module counts, including the ones deferred into a
function body. ``LAYERS`` is the order drawn in ARCHITECTURE.md; a new module must be
given a layer here, or the test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "stableemote_utils"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: dict[str, tuple[str, ...]] = {
    "foundations": (
        "",  # the package's __init__
        "errors",
        "notices",
        "files",
        "images",
        "presets",
        "precision",
        "options",
        "checkpoints",
        "run_folder",
        "training_config",
        "captions",
        "config_file",
        "hub",
        "plots",
        "cli",  # subpackage __init__ files hold only a docstring
        "tinyemote",
    ),
    "models and data": (
        "tiny_model",
        "tinyemote.install",
        "tinyemote.lesson_run",
        "loading",
        "data",
        "emoji_fonts",
        "notebook",
        "lora_files",
        "lora_inspect",
        "lora_peft",
        "sgm_names",
    ),
    "lessons": (
        "vae",
        "text",
        "denoising",
        "sampling",
        "attention",
        "lora",
        "sdxl_conditioning",
        "model_family",
        "latent_cache",
        "training",
        "training_setup",
        "training_records",
        "compare",
    ),
    "tools": (
        "metrics",
        "bench",
        "quickstart",
        "figures",
        "tinyemote.clip",
        "tinyemote.pretrain",
        "tinyemote.pretrain_xl",
        "tinyemote.evaluate",
        "tinyemote.card",
        "tinyemote.style",
    ),
    "command line": (
        "cli.common",
        "cli.lora",
        "cli.tinyemote",
        "cli.demo_generation",
        "cli.demo_app",
        "cli.demo",
        "cli.train",
        "cli.main",
        "cli.__main__",
    ),
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name inside the package ('' for its __init__) -> file."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def package_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (deferred ones too)."""
    files = module_files(root)

    def known(dotted: str) -> str | None:
        # "lora_files.save_lora" -> "lora_files"; "" is the package itself.
        while dotted not in files:
            if not dotted:
                return None
            dotted = dotted.rpartition(".")[0]
        return dotted

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                full = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = name.split(".") if name else []
                    if path.name != "__init__.py":
                        here = here[:-1]
                    base = here[: len(here) - (node.level - 1)]
                    module = ".".join([package, *base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                full = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            for dotted in full:
                if dotted == package or dotted.startswith(package + "."):
                    hit = known(dotted[len(package) + 1 :])
                    if hit is not None and hit != name:
                        targets.add(hit)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def upward_imports(graph: dict[str, set[str]], layers: dict[str, tuple[str, ...]]) -> list[str]:
    """``"a (layer) imports b (higher layer)"`` for every import that points up."""
    rank = {m: i for i, members in enumerate(layers.values()) for m in members}
    names = list(layers)
    return [
        f"{a or '__init__'} ({names[rank[a]]}) imports {b or '__init__'} ({names[rank[b]]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if rank[b] > rank[a]
    ]


def unplaced(graph: dict[str, set[str]], layers: dict[str, tuple[str, ...]]) -> list[str]:
    placed = [m for members in layers.values() for m in members]
    return sorted(set(graph) - set(placed)) + sorted({m for m in placed if placed.count(m) > 1})


def test_every_module_has_exactly_one_layer():
    graph = package_imports(ROOT, PACKAGE)
    assert unplaced(graph, LAYERS) == [], "give each module one layer in LAYERS"
    missing = sorted({m for members in LAYERS.values() for m in members} - set(graph))
    assert missing == [], f"LAYERS lists modules that no longer exist: {missing}"


def test_the_package_has_no_import_cycle():
    assert find_cycles(package_imports(ROOT, PACKAGE)) == []


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(package_imports(ROOT, PACKAGE), LAYERS) == []


# The checks themselves, on a small package written for the purpose.


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "low.py").write_text("import os\n")
    (root / "mid.py").write_text("from toy.low import x\n")
    (root / "sub" / "high.py").write_text("from .. import mid\n")
    return root


def test_checks_pass_a_clean_package(toy):
    graph = package_imports(toy, "toy")
    assert graph["mid"] == {"low"}
    assert graph["sub.high"] == {"", "mid"}  # "from .. import mid" runs the __init__ too
    layers = {"a": ("", "low", "sub"), "b": ("mid",), "c": ("sub.high",)}
    assert find_cycles(graph) == []
    assert upward_imports(graph, layers) == []
    assert unplaced(graph, layers) == []


def test_checks_catch_a_deferred_cycle_and_an_upward_import(toy):
    (toy / "low.py").write_text("def f():\n    from toy.sub import high\n")
    graph = package_imports(toy, "toy")
    assert find_cycles(graph) == [["low", "mid", "sub.high"]]
    layers = {"a": ("", "low", "sub"), "b": ("mid",), "c": ("sub.high",)}
    assert upward_imports(graph, layers) == ["low (a) imports sub.high (c)"]


def test_checks_catch_an_unplaced_module(toy):
    graph = package_imports(toy, "toy")
    assert unplaced(graph, {"a": ("", "low", "sub"), "b": ("mid",)}) == ["sub.high"]


# Each lesson module names its notebook in its docstring, and that notebook imports it.
LESSONS = {
    "vae": "01_vae_latents",
    "text": "02_clip_text_embeddings",
    "denoising": "03_unet_denoising_loop",
    "lora": "04_lora_injection",
    "training": "05_lora_training",
    "compare": "06_inference_comparison",
    "attention": "06_inference_comparison",
}


@pytest.mark.parametrize("module", sorted(LESSONS))
def test_lesson_modules_name_their_notebook(module):
    notebook = LESSONS[module]
    path = ROOT.parent / "notebooks" / f"{notebook}.ipynb"
    assert path.exists(), path
    assert f"from {PACKAGE}.{module} import" in path.read_text(), f"{notebook} uses {module}"
    doc = ast.get_docstring(ast.parse((ROOT / f"{module}.py").read_text())) or ""
    assert f"``{notebook}``" in doc, f"{module}'s docstring should name {notebook}"


@pytest.mark.parametrize("module", sorted(LESSONS))
def test_lesson_modules_hold_no_plotting_code(module):
    """Plots live in figures (the loss plot training writes in plots), not in the lessons."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m.split(".")[0] == "matplotlib"], module


def test_architecture_md_lists_the_modules_each_notebook_imports():
    """ARCHITECTURE.md's table names exactly the package modules each notebook imports."""
    import re

    modules = module_files(ROOT)
    table = (ROOT.parent / "ARCHITECTURE.md").read_text()
    rows = re.findall(r"^\| (\d\d_\w+) \|(.*)$", table, flags=re.MULTILINE)
    notebooks = sorted(p.stem for p in (ROOT.parent / "notebooks").glob("*.ipynb"))
    assert sorted(n for n, _ in rows) == notebooks, "one row per notebook"
    for notebook, cells in rows:
        listed = set()
        for name in re.findall(r"`([\w.]+)`", cells):
            while name not in modules:  # "denoising.add_noise" names a function of denoising
                name = name.rpartition(".")[0]
            listed.add(name)
        source = (ROOT.parent / "notebooks" / f"{notebook}.ipynb").read_text()
        imported = set(re.findall(rf"from {PACKAGE}\.([\w.]+) import", source))
        assert listed == imported - {"notebook", "errors"}, notebook
