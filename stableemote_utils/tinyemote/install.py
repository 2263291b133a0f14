"""Install the shipped TinyEmote weights into the cache, where the ``tiny`` preset loads them.

The weights ship inside the package (``stableemote_utils/weights/tinyemote``, fp16
safetensors, made by ``stableemote pretrain-tiny``). :func:`ensure_tinyemote` installs
them into the cache with the CLIP tokenizer next to them, so that
``StableDiffusionPipeline.from_pretrained`` loads them like any SD 1.5 folder.
TinyEmote-XL (``stableemote_utils/weights/tinyemote-xl``, the ``tiny-xl`` preset) is
installed the same way, with both of its tokenizers, for
``StableDiffusionXLPipeline.from_pretrained``.

TinyEmote-XL's text encoders and VAE are TinyEmote's own weights, so they ship once: its
folder lists them in :data:`SHARED_FILE` (which TinyEmote file, which of its tensors, and
a digest of those tensors) and the install writes them from TinyEmote's files. Both models
fit in the package's 50 MB that way, with room for a UNet as wide as TinyEmote's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path, PurePath

import torch

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.files import read_marker, staged_folder
from stableemote_utils.presets import tinyemote_dir
from stableemote_utils.tiny_model import write_clip_tokenizer

SHIPPED_DIR = Path(__file__).parent.parent / "weights" / "tinyemote"
SHIPPED_XL_DIR = Path(__file__).parent.parent / "weights" / "tinyemote-xl"
# The shipped models by preset: (name, folder of their weights in the package).
SHIPPED_MODELS = {"tiny": ("TinyEmote", SHIPPED_DIR), "tiny-xl": ("TinyEmote-XL", SHIPPED_XL_DIR)}


MARKER = "STABLEEMOTE_TINYEMOTE"
# In a shipped model folder: the weight files it takes from TinyEmote's shipped folder.
SHARED_FILE = "shared_with_tinyemote.json"
# What TinyEmote-XL shares: its file -> (TinyEmote's file, prefixes of the tensors taken;
# ``()`` takes all). Encoder 2 is the tiny CLIP's text tower with its text projection, the
# tensors of TinyEmote's ``clip/`` whose names start so.
XL_SHARED = {
    "text_encoder/model.safetensors": ("text_encoder/model.safetensors", ()),
    "text_encoder_2/model.safetensors": (
        "clip/model.safetensors",
        ("text_model.", "text_projection."),
    ),
    "vae/diffusion_pytorch_model.safetensors": ("vae/diffusion_pytorch_model.safetensors", ()),
}


# Files that describe the model rather than make it up: rewriting them (the model card, the
# measurements of the model) changes neither the weights' digest nor the install.
RECORD_FILES = frozenset({"README.md", "metrics.json", "pretrain.json"})


def portable_record(record):
    """A JSON record with the build machine's absolute paths cut down to their last part.

    ``/tmp/build/out`` becomes ``out``, inside strings and inside the recorded ``command``
    alike, so a record shipped with the weights names no folder of the machine that made
    them and its command still runs elsewhere. Relative paths are kept as they are.
    """
    if isinstance(record, dict):
        return {key: portable_record(value) for key, value in record.items()}
    if isinstance(record, list):
        return [portable_record(value) for value in record]
    if isinstance(record, str):
        if record.startswith("stableemote "):
            return shlex.join(portable_record(shlex.split(record)))
        if os.path.isabs(record):
            return PurePath(record).name
    return record


def shipped_digest(source: Path = SHIPPED_DIR) -> str:
    """A short hash of the shipped model (weights, configs, scheduler; not its records).

    A changed model file means a reinstall. The model card and the records in
    :data:`RECORD_FILES` are left out, so ``metrics.json`` can name the digest of the
    weights it measured and still be right after the card is written beside it.
    """
    h = hashlib.sha256()
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.relative_to(source).as_posix() not in RECORD_FILES:
            h.update(path.relative_to(source).as_posix().encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _refresh_records(folder: Path, source: Path) -> None:
    """Bring the installed records (``metrics.json``, ``pretrain.json``) in line with the shipped.

    The digest leaves them out, so new measurements of the same weights reach an installed
    copy here, each file replaced whole, without reinstalling the weights.
    """
    for name in sorted(RECORD_FILES - {"README.md"}):
        shipped, installed = source / name, folder / name
        if not shipped.exists():
            installed.unlink(missing_ok=True)
        elif not installed.exists() or installed.read_bytes() != shipped.read_bytes():
            partial = installed.with_name(f".{name}.{os.getpid()}")
            shutil.copyfile(shipped, partial)
            partial.replace(installed)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors (names, dtypes, shapes, values), the file's header aside."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d and empty too
    return h.hexdigest()


def shared_tensors(tinyemote: Path, file: str, prefixes: tuple[str, ...] | list[str]) -> dict:
    """The tensors of TinyEmote's ``file`` whose names start with one of ``prefixes`` (all if none)."""
    from safetensors.torch import load_file

    tensors = load_file(str(tinyemote / file))
    return {k: v for k, v in tensors.items() if not prefixes or k.startswith(tuple(prefixes))}


def read_shared(folder: Path) -> dict[str, dict]:
    """The shared weight files a model folder lists: ``{its file: {"from", "prefixes", "digest"}}``."""
    path = Path(folder) / SHARED_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def strip_shared(folder: Path, tinyemote: Path | None = None) -> dict[str, dict]:
    """Replace ``folder``'s copies of TinyEmote's weights (:data:`XL_SHARED`) by :data:`SHARED_FILE`.

    Each file must hold exactly TinyEmote's tensors (a build made with ``--vae-from`` and
    ``--clip-from`` TinyEmote's shipped folders does); otherwise nothing is removed and a
    :class:`StableEmoteError` says which file differs.
    """
    from safetensors.torch import load_file

    tinyemote = Path(tinyemote or SHIPPED_DIR)
    listing = {}
    for file, (origin, prefixes) in XL_SHARED.items():
        own = tensor_digest(load_file(str(folder / file)))
        theirs = tensor_digest(shared_tensors(tinyemote, origin, prefixes))
        if own != theirs:
            raise StableEmoteError(
                f"{folder / file} is not TinyEmote's {origin}, so it cannot be shared. Build "
                "TinyEmote-XL with --vae-from and --clip-from TinyEmote's shipped folders "
                f"({tinyemote / 'vae'}, {tinyemote / 'clip'})."
            )
        listing[file] = {"from": origin, "prefixes": list(prefixes), "digest": own}
    for file in listing:
        (folder / file).unlink()
    (folder / SHARED_FILE).write_text(json.dumps(listing, indent=1) + "\n")
    return listing


def write_shared(folder: Path, tinyemote: Path | None = None) -> None:
    """Write the weight files ``folder``'s :data:`SHARED_FILE` lists from TinyEmote's folder
    (default :data:`SHIPPED_DIR`).

    Raises :class:`StableEmoteError` when TinyEmote's tensors are not those the model was
    built with (its digest differs), rather than install a model with other encoders.
    """
    from safetensors.torch import save_file

    tinyemote = Path(tinyemote or SHIPPED_DIR)
    for file, entry in read_shared(folder).items():
        tensors = shared_tensors(tinyemote, entry["from"], entry["prefixes"])
        if tensor_digest(tensors) != entry["digest"]:
            raise StableEmoteError(
                f"TinyEmote's {entry['from']} in {tinyemote} is not the one {folder.name} was "
                f"built with, so its {file} cannot be made from it. Reinstall the package "
                "(pip install -e .), or rebuild TinyEmote-XL on this TinyEmote: "
                "stableemote pretrain-tiny --family sdxl --install"
            )
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})


def tokenizer_folders(source: Path) -> list[str]:
    """The tokenizer subfolders a shipped model's ``model_index.json`` names, e.g. ``["tokenizer"]``.

    SDXL's layout has two (``tokenizer``, ``tokenizer_2``).
    """
    index = json.loads((source / "model_index.json").read_text())
    return sorted(k for k in index if k.startswith("tokenizer") and index[k][0] is not None)


def ensure_tinyemote(folder: str | os.PathLike | None = None, source: Path = SHIPPED_DIR) -> Path:
    """Install TinyEmote into ``folder`` (default ``<cache>/tinyemote``) if missing or stale.

    Copies the shipped weights, writes the weights it shares with TinyEmote
    (:data:`SHARED_FILE`) and the CLIP tokenizer beside them (into every tokenizer folder
    the model index names), in a temporary folder renamed into place, so an interrupted
    install never leaves half a model. With ``source`` = :data:`SHIPPED_XL_DIR` it installs
    TinyEmote-XL.

    Returns:
        The model folder, loadable with ``StableDiffusionPipeline.from_pretrained`` (or
        ``StableDiffusionXLPipeline.from_pretrained`` for TinyEmote-XL).
    """

    folder = Path(folder or tinyemote_dir())
    if not (source / "unet" / "diffusion_pytorch_model.safetensors").exists():
        name = "TinyEmote-XL" if source.name == SHIPPED_XL_DIR.name else "TinyEmote"
        raise StableEmoteError(
            f"{name}'s weights are missing from {source}. Reinstall the package (pip install "
            "-e .) or rebuild them with: stableemote pretrain-tiny --install"
            + (" --family sdxl" if name == "TinyEmote-XL" else "")
        )
    digest = shipped_digest(source)
    if read_marker(folder / MARKER).get("digest") == digest:
        _refresh_records(folder, source)
        return folder
    with staged_folder(folder) as staging:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.md"))
        write_shared(staging)
        for sub in tokenizer_folders(source):
            write_clip_tokenizer(staging / sub)
        (staging / MARKER).write_text(json.dumps({"digest": digest}) + "\n")
    return folder
