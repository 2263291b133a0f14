"""Writing files and folders so that an interrupted write never leaves half of one.

Infrastructure used by the model builders, installers and exporters: one helper writes a
folder aside and renames it into place, one writes a safetensors file (adapters, exports,
checkpoints) aside and renames it into place with the permissions ``open()`` would give it,
and one reads the small JSON marker files that say what a built folder holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
        give_open_modes(tmp / "folder")
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


def _open_mode(folder: Path) -> int:
    """The permission bits ``open()`` gives a new file in ``folder`` (umask, default ACLs)."""
    probe = folder / f".mode-probe-{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)


def give_open_modes(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` the mode ``open()`` gives a new file there.

    safetensors (and so every ``save_pretrained``) writes through a private temporary file
    and leaves mode 0600; models and exports are files people share.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    mode = _open_mode(folder)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def save_state_dict_atomic(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> Path:
    """Write a safetensors file next to ``path`` and rename it into place.

    A crash mid-write leaves at most a stray ``*.partial`` file, never a half-written
    file under the real name. The file gets the permissions ``open()`` gives a new file in
    that folder (0666 less the umask), not the private 0600 that safetensors' own
    temporary file has: adapters, exports and checkpoints are files people share.

    Args:
        state_dict: name -> tensor (any device; written from CPU copies).
        path: the ``.safetensors`` file to write.
        metadata: header strings (``"format": "pt"`` is added).

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        mode = _open_mode(path.parent)
        save_file(tensors, tmp, metadata={"format": "pt", **metadata})
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
