"""How ``pytest --nbval notebooks/`` re-runs the course's notebooks and checks their outputs.

nbval runs every cell and compares its text outputs with the ones stored in the notebook.
This file sets it up the way the stored outputs were made (``tests/notebook_outputs.py``):

* the kernel gets the stored run's environment: the ``tiny`` preset, the CPU, fp32, one
  thread, offline; with ``STABLEEMOTE_NBVAL_ISA=avx2`` (``make test``), AVX2 code paths too;
* the sanitiser ``nbval_sanitize.cfg`` (beside this file) is used unless another is named;
* each notebook runs in order in one kernel; under pytest-xdist, on one worker, and 05 and
  06 on the same one (06 reads what 05 trained): ``make test`` runs the notebooks and the
  tests in ``tests/`` in one pytest run over two workers;
* printed numbers may differ by one unit in their last printed digit, the words around them
  not at all (``notebook_outputs.reconcile_numbers``): a value on a rounding boundary prints
  one way on one CPU and the other way on another;
* pictures are compared too, which nbval leaves out: every stored ``image/png`` must be
  what the re-run draws, within the tolerance of ``notebook_outputs.picture_difference``;
* after each notebook's last cell, one more item checks the CPU time its introduction
  states ("about N minutes on a CPU with the `tiny` preset") against the CPU time its
  kernel used in this run (:func:`kernel_cpu_seconds`): within a factor of two either way.
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
# Seconds the cells of each notebook took in this run (filled as its cells report), and the
# CPU seconds its kernel used (filled by its stated-time item).
_cell_seconds: dict[str, float] = {}
_kernel_seconds: dict[str, float] = {}


def kernel_cpu_seconds(notebook_file) -> float:
    """CPU seconds (user + system, its finished child processes included) that the kernel
    running ``notebook_file`` has used so far.

    The stated time is checked against this rather than against wall time: a notebook's
    kernel runs on one thread, so on a learner's otherwise idle CPU the two agree, while
    under ``make test`` the kernels share two cores with each other and with the unit
    tests, which stretches wall time but not CPU time.
    """
    import psutil

    times = psutil.Process(notebook_file.kernel.km.provisioner.pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


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
        took = kernel_cpu_seconds(self.parent)
        self.user_properties.append(("kernel_cpu_seconds", took))  # reaches xdist's controller
        assert stated / TIME_FACTOR <= took <= stated * TIME_FACTOR, (
            f"{self.parent.name} says about {stated:.0f} s on a CPU; its kernel used {took:.0f} s "
            f"of CPU here (allowed: within {TIME_FACTOR:g}x). Restate the time from this run."
        )

    def reportinfo(self):
        return self.path, 0, f"{self.parent.name}::stated CPU time"


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    path = str(HERE / Path(report.nodeid.split("::")[0]).name)
    if "::Cell " in report.nodeid:
        _cell_seconds[path] = _cell_seconds.get(path, 0.0) + report.duration
    for name, value in report.user_properties:
        if name == "kernel_cpu_seconds":
            _kernel_seconds[path] = value


def pytest_terminal_summary(terminalreporter):
    """How long each notebook's cells took in this run, beside the time it states."""
    if not _cell_seconds:
        return
    terminalreporter.section("notebooks: seconds their cells took, and their kernel's CPU seconds")
    for path, seconds in sorted(_cell_seconds.items()):
        cpu = _kernel_seconds.get(path)
        cpu_text = f"{cpu:7.1f} s CPU" if cpu is not None else ""
        terminalreporter.write_line(f"{Path(path).name:40} {seconds:7.1f} s  {cpu_text}")


def _nbval_on(config) -> bool:
    return bool(
        getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    )


# STABLEEMOTE_NBVAL_ISA=avx2 (make test sets it) runs the kernels on AVX2 code paths
# (notebook_outputs.AVX2_ENV), so that outputs stored on a machine with AVX-512 are checked
# against another instruction set on every run; on an AVX2 machine it is the native run.
ISA_ENV_VAR = "STABLEEMOTE_NBVAL_ISA"


def notebook_kernel_env() -> dict:
    """The environment nbval starts each notebook's kernel with."""
    base = dict(os.environ)
    isa = base.get(ISA_ENV_VAR, "").lower()
    if isa == "avx2":
        base.update(notebook_outputs.AVX2_ENV)
    elif isa not in ("", "native"):
        raise pytest.UsageError(f"{ISA_ENV_VAR}={isa!r}: use 'avx2' or 'native'")
    return notebook_outputs.kernel_env(base)


def _start_kernel_in_notebook_env(original):
    """nbval starts a notebook's kernel with this process's environment: start it with
    :func:`notebook_kernel_env` instead, leaving this process's own as it was (the unit
    tests may share the process under pytest-xdist)."""

    def setup(self):
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(notebook_kernel_env())
        try:
            original(self)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    return setup


def pytest_configure(config):
    if not _nbval_on(config):
        return
    if not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(SANITIZER)
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True  # this environment's Python runs the kernel
    from nbval.plugin import IPyNbFile

    if not getattr(IPyNbFile.setup, "_in_notebook_env", False):
        IPyNbFile.setup = _start_kernel_in_notebook_env(IPyNbFile.setup)
        IPyNbFile.setup._in_notebook_env = True


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


# Under pytest-xdist (make test runs the notebooks beside the unit tests), each notebook's
# cells run in order on one worker, in one kernel. The notebooks are independent (06 reads
# notebook 05's run as stored with the course under tiny) and may run side by side, one
# thread each.


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Each notebook's cells in one xdist group; after each notebook's last cell, the item
    that checks its stated CPU time; and the pictures compared, in strict mode (lax mode
    compares no outputs)."""
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
    for item in items:
        if isinstance(item, IPyNbCell | StatedTimeItem):
            stem = Path(str(item.parent.fspath)).stem
            item.add_marker(pytest.mark.xdist_group(f"notebook-{stem}"))
