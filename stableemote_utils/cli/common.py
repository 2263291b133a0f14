"""Arguments shared by the ``stableemote`` subcommands."""

from __future__ import annotations

import argparse


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
