"""How ``pytest --nbval notebooks/`` re-runs the course's notebooks and checks their outputs.

nbval runs every cell and compares its text outputs with the ones stored in the notebook.
This file sets it up the way the stored outputs were made (``tests/notebook_outputs.py``):

* the kernel gets the stored run's environment: the ``tiny`` preset, the CPU, fp32, one
  thread, offline;
* the sanitiser ``nbval_sanitize.cfg`` (beside this file) is used unless another is named;
* the notebook cells stay together, in order, on one pytest-xdist worker (06 reads what 05
  trained);
* pictures are compared too, which nbval leaves out: every stored ``image/png`` must be
  what the re-run draws, within the tolerance of ``notebook_outputs.picture_difference``.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import notebook_outputs  # noqa: E402

SANITIZER = HERE / "nbval_sanitize.cfg"


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
    """nbval's text comparison, then the pictures (which it skips) within our tolerance."""

    def compare_outputs(self, test, ref, skip_compare=None):
        if not original(test, ref, skip_compare):
            return False
        stored, drawn = notebook_outputs.pictures(ref), notebook_outputs.pictures(test)
        if len(stored) != len(drawn):
            self.comparison_traceback.append(
                f"{len(stored)} stored picture(s), {len(drawn)} drawn by the re-run"
            )
            return False
        for index, (old, new) in enumerate(zip(stored, drawn, strict=True)):
            problem = notebook_outputs.picture_difference(old, new)
            if problem:
                self.comparison_traceback.append(f"picture {index + 1} differs: {problem}")
                return False
        return True

    return compare_outputs


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if not _nbval_on(config):
        return
    from nbval.plugin import IPyNbCell

    for item in items:
        if isinstance(item, IPyNbCell):
            item.add_marker(pytest.mark.xdist_group("notebooks"))
            if config.option.nbval:  # strict mode compares outputs; lax mode does not
                item.compare_outputs = types.MethodType(
                    _compare_with_pictures(item.compare_outputs), item
                )
