"""What the ``stableemote`` subcommands share: declaring one, and ``--preset``/``--device``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and ``--device``, shared by every subcommand that loads a model."""
    p.add_argument(
        "--preset",
        default=None,
        help="sd15 (real model, GPU + network), tiny (offline, CPU), a Hub id or a folder. "
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
    **parser_kwargs: Any,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, run by ``func``; its parser, for its own options.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.
        func: the handler; ``main`` calls it with the parsed arguments.
        common: give it ``--preset`` and ``--device`` (:func:`add_common_args`) first.
        parser_kwargs: for ``add_parser``: ``help``, ``description``, ``formatter_class``.
    """
    p = subparsers.add_parser(name, **parser_kwargs)
    if common:
        add_common_args(p)
    p.set_defaults(func=func)
    return p
