"""How ``pytest --nbval notebooks/`` re-runs the course's notebooks and checks their outputs.

nbval runs every cell and compares its text outputs with the ones stored in the notebook.
This file sets it up the way the stored outputs were made (``tests/notebook_outputs.py``):

* the kernel gets the stored run's environment: the ``tiny`` preset, the CPU, fp32, one
  thread, offline;
* the sanitiser ``nbval_sanitize.cfg`` (beside this file) is used unless another is named;
* the notebooks run in order in one process (06 reads what 05 trained): ``make test`` runs
  this before the tests in ``tests/``, which it spreads over pytest-xdist workers;
* printed numbers may differ by one unit in their last printed digit, the words around them
  not at all (``notebook_outputs.reconcile_numbers``): a value on a rounding boundary prints
  one way on one CPU and the other way on another;
* pictures are compared too, which nbval leaves out: every stored ``image/png`` must be
  what the re-run draws, within the tolerance of ``notebook_outputs.picture_difference``;
* after each notebook's last cell, one more item checks the CPU time its introduction
  states ("about N minutes on a CPU with the `tiny` preset") against the time its cells
  took in this run: within a factor of two either way.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import notebook_outputs  # noqa: E402

SANITIZER = HERE / "nbval_sanitize.cfg"
STATED_CPU_TIME = re.compile(
    r"about (\d+(?:\.\d+)?) (seconds|minutes?) on a CPU with the `tiny` preset", re.IGNORECASE
)
TIME_FACTOR = 2.0
# Seconds the cells of each notebook took in this run (filled as its cells report).
_cell_seconds: dict[str, float] = {}


def stated_cpu_seconds(notebook) -> float | None:
    """The CPU time a notebook's markdown states for the tiny preset, in seconds."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            found = STATED_CPU_TIME.search(cell.source.replace("\n", " "))
            if found:
                value, unit = float(found.group(1)), found.group(2)
                return value * (1 if unit.lower() == "seconds" else 60)
    return None


class StatedTimeItem(pytest.Item):
    """Checks a notebook's stated CPU time against the time its cells took in this run."""

    def runtest(self) -> None:
        stated = stated_cpu_seconds(self.parent.nb)
        assert stated is not None, (
            f"{self.parent.name} states no CPU time ('about N minutes on a CPU with the "
            "`tiny` preset')"
        )
        took = _cell_seconds.get(str(self.parent.fspath), 0.0)
        assert stated / TIME_FACTOR <= took <= stated * TIME_FACTOR, (
            f"{self.parent.name} says about {stated:.0f} s on a CPU; its cells took {took:.0f} s "
            f"here (allowed: within {TIME_FACTOR:g}x). Restate the time from this run."
        )

    def reportinfo(self):
        return self.path, 0, f"{self.parent.name}::stated CPU time"


def pytest_runtest_logreport(report):
    if report.when == "call" and "::Cell " in report.nodeid:
        path = str(HERE / Path(report.nodeid.split("::")[0]).name)
        _cell_seconds[path] = _cell_seconds.get(path, 0.0) + report.duration


def _nbval_on(config) -> bool:
    return bool(
        getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    )


def pytest_configure(config):
    if not _nbval_on(config):
        return
    if not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(SANITIZER)
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True  # this environment's Python runs the kernel
    # nbval starts each kernel with this process's environment.
    os.environ.update(notebook_outputs.kernel_env())
    for name in notebook_outputs.KERNEL_ENV_REMOVED:
        os.environ.pop(name, None)


def _compare_with_pictures(original):
    """nbval's text comparison, with each printed number allowed one unit in its last digit
    (``notebook_outputs.reconcile_outputs``), then the pictures (which nbval skips) within
    their tolerance. A number that moved further, or changed words, fails with nbval's diff."""

    def compare_outputs(self, test, ref, skip_compare=None):
        test = notebook_outputs.reconcile_outputs(ref, test)
        if not original(test, ref, skip_compare):
            return False
        problem = notebook_outputs.picture_problem(ref, test)
        if problem:
            self.comparison_traceback.append(problem)
        return problem is None

    return compare_outputs


def pytest_collection_modifyitems(config, items):
    """After each notebook's last cell, the item that checks its stated CPU time; and the
    pictures compared, in strict mode (lax mode compares no outputs)."""
    if not _nbval_on(config):
        return
    from nbval.plugin import IPyNbCell

    last_cells = {}
    for index, item in enumerate(items):
        if isinstance(item, IPyNbCell):
            last_cells[item.parent] = index
            if config.option.nbval:
                item.compare_outputs = types.MethodType(
                    _compare_with_pictures(item.compare_outputs), item
                )
    for parent, index in sorted(last_cells.items(), key=lambda pair: -pair[1]):
        items.insert(index + 1, StatedTimeItem.from_parent(parent, name="stated CPU time"))
