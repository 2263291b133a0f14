"""What the ``stableemote`` subcommands share: declaring one, ``--preset``/``--device``, ``--output-dir``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and ``--device``, shared by every subcommand that loads a model."""
    p.add_argument(
        "--preset",
        default=None,
        help="sd15 (real model, GPU + network), tiny (offline, CPU), sdxl (SDXL base 1.0, GPU + "
        "network), tiny-xl (SDXL's architecture, offline, CPU), a Hub id or a folder. "
        "Default: $STABLEEMOTE_PRESET, else sd15.",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)"
    )


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], None],
    *,
    common: bool = False,
    uses_cache: bool = False,
    **parser_kwargs: Any,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``func``; its parser, for its own options.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
        func: the handler; ``main`` calls it with the parsed arguments.
        common: give it ``--preset`` and ``--device`` (:func:`add_common_args`) first.
        uses_cache: it builds, renders or caches in ``$STABLEEMOTE_CACHE``: ``main``
            checks that folder before calling ``func``.
        parser_kwargs: for ``add_parser``: ``help``, ``description``, ``formatter_class``.
    """
    p = subparsers.add_parser(name, **parser_kwargs)
    if common:
        add_common_args(p)
    p.set_defaults(func=func, uses_cache=uses_cache)
    return p


def add_output_dir(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """Add ``--output-dir`` (every command's spelling) and the deprecated ``--out``.

    ``--out`` keeps what it meant before (the output file of ``compare`` and
    ``tiny-grid``, the folder of ``figures``); :func:`output_path` prints a notice.
    """
    p.add_argument("--output-dir", default=default, help=help)
    p.add_argument(
        "--out",
        dest="deprecated_out",
        metavar="PATH",
        default=None,
        help="deprecated spelling of --output-dir, kept working (prints a notice)",
    )


def output_path(args: argparse.Namespace, file_name: str | None = None) -> Path:
    """Where a command writes: ``--output-dir`` (with ``file_name`` inside), or what the
    deprecated ``--out`` names, with a one-line notice on stderr."""
    if args.deprecated_out is not None:
        print(
            "stableemote: note: --out is deprecated; use --output-dir FOLDER"
            + (f" (writes FOLDER/{file_name})" if file_name else ""),
            file=sys.stderr,
        )
        return Path(args.deprecated_out)
    folder = Path(args.output_dir)
    return folder / file_name if file_name else folder


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Add ``(default: X)`` to the help of every option of ``parser`` and its subcommands
    whose default is a value and whose help does not say it already.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter``, a ``None`` default (whose meaning
    the help must say in words), ``False`` of a switch and a suppressed one are left alone.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                show_defaults(sub)
            continue
        default, text = action.default, action.help
        if (
            text
            and text != argparse.SUPPRESS
            and default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and action.option_strings
        ):
            action.help = f"{text} (default: %(default)s)"
