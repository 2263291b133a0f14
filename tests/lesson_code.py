"""One source of truth for the code a notebook teaches and its lesson module holds.

A notebook writes the idea out (the LoRA layer, the DDIM step, the attention recorder) and
the lesson module holds the same definition, which later notebooks import. These helpers
read a definition from both sides so that a test can assert they are the same text.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def _definition(source: str, name: str) -> str | None:
    """The top-level ``def``/``class`` called ``name`` in ``source``, normalised by ast."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    for node in tree.body:
        kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        if isinstance(node, kinds) and node.name == name:
            return ast.unparse(node)
    return None


def notebook_definition(notebook: str, name: str) -> str:
    """``name``'s definition as the notebook (e.g. ``"04"``) writes it in one of its cells."""
    import nbformat

    path = next(NOTEBOOK_DIR.glob(f"{notebook}_*.ipynb"))
    found = [
        d
        for cell in nbformat.read(path, as_version=4).cells
        if cell.cell_type == "code"
        for d in [_definition(cell.source, name)]
        if d is not None
    ]
    assert len(found) == 1, f"{path.name} defines {name} {len(found)} times (want once)"
    return found[0]


def module_definition(obj) -> str:
    """The definition of a module's function or class, normalised the same way."""
    found = _definition(textwrap.dedent(inspect.getsource(obj)), obj.__name__)
    assert found is not None, obj
    return found
