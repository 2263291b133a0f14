"""Writing files and folders so that an interrupted write never leaves half of one.

Infrastructure used by the model builders, installers and exporters: one helper writes a
folder aside and renames it into place, and one reads the small JSON marker files that
say what a built folder holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Write a folder aside and put it in place only when the writing succeeded.

    Yields a path beside ``folder`` (not created yet) for the caller to fill; its parent
    is scratch space. When the block ends without error the path replaces ``folder``;
    on error, or after the rename, the scratch space is removed. So an interrupted write
    never leaves a half-written folder, and the old folder stays until the new one is whole.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".partial", dir=folder.parent))
    try:
        yield tmp / "folder"
        if folder.exists():
            shutil.rmtree(folder)
        (tmp / "folder").rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_marker(path: str | os.PathLike) -> dict:
    """A JSON marker file's contents, or ``{}`` when it is missing or unreadable."""
    with contextlib.suppress(ValueError, OSError):
        return json.loads(Path(path).read_text())
    return {}
