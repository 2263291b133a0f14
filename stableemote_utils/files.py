"""Writing files and folders so that an interrupted write never leaves half of one.

Infrastructure used by the model builders, installers and exporters: one helper writes a
folder aside and renames it into place, one writes a safetensors file (adapters, exports,
checkpoints) aside and renames it into place with the permissions ``open()`` would give it,
and one reads the small JSON marker files that say what a built folder holds. When the
disk is full (or read-only, or over quota), :func:`explain_write_errors` turns the error
into one line that names what was being written, where, and the space left there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stableemote_utils.errors import WriteFailedError

if TYPE_CHECKING:
    import torch

# The errors that say the disk, not the program, is at fault: full, over quota, file too
# large, read-only, failing. The command line reports these in one line wherever they arise.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
WRITE_AGAIN_ADVICE = "Free some space there (or choose another folder) and run it again."
# Rust's std::io::Error, as safetensors reports it: "... No space left on device (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``, or ``None`` if there is none.

    ``err`` itself when it is an ``OSError``; the one inside a :class:`WriteFailedError`;
    for safetensors' ``SafetensorError`` (not an ``OSError``), one rebuilt from the
    ``(os error N)`` in its text.
    """
    if isinstance(err, OSError):
        return err
    if isinstance(err, WriteFailedError):
        return err.os_error
    if type(err).__name__ == "SafetensorError":
        match = _RUST_OS_ERROR.search(str(err))
        if match:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes for people: ``"412.0 KB"``, ``"3.2 GB"`` (decimal units, as ``df -H``)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the disk that holds ``path`` (or its nearest existing
    parent); ``None`` if that cannot be told."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(folder).free
            return None
    return None


def write_failed(
    what: str, path: str | os.PathLike | None, err: OSError, advice: str = WRITE_AGAIN_ADVICE
) -> WriteFailedError:
    """The one-line error for an ``OSError`` while writing ``what`` to ``path``.

    Names the path (when known), what was being written, the system's reason and the
    space left there, then ``advice`` (what to do next).
    """
    free = None if path is None else free_space(path)
    where = "" if free is None else f"; {format_bytes(free)} free there"
    reason = err.strerror or str(err) or type(err).__name__
    message = f"Could not write {what} {path or ''} ({reason}{where}). {advice}"
    return WriteFailedError(" ".join(message.split()), err)


@contextlib.contextmanager
def explain_write_errors(
    what: str, path: str | os.PathLike, advice: str = WRITE_AGAIN_ADVICE
) -> Iterator[None]:
    """Within the block, an OS error (disk full, read-only ...) becomes a one-line error.

    The block's own cleanup (temporary files and folders) runs before the error leaves it.
    An error already explained by an inner block is explained again here: the outermost
    block knows best what was being written (a checkpoint, not one of its files) and what
    to do next.

    Raises:
        WriteFailedError: naming ``what``, ``path``, the reason and the free space there.
    """
    try:
        yield
    except Exception as err:
        cause = os_error_of(err)
        if cause is None:
            raise
        raise write_failed(what, path, cause, advice) from err


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

    Raises:
        WriteFailedError: the disk is full (or read-only ...); nothing is left behind.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with explain_write_errors("the file", path):
        path.parent.mkdir(parents=True, exist_ok=True)
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
