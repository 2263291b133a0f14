"""``stableemote pretrain-tiny`` and ``stableemote evaluate-tiny``: make and measure TinyEmote."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def cmd_pretrain(args: argparse.Namespace) -> None:
    from stableemote_utils.pretrain import PretrainConfig, pretrain_tiny

    config = PretrainConfig(
        output_dir=args.output_dir,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    record = pretrain_tiny(config, resume=not args.fresh)
    model = Path(args.output_dir) / "tinyemote"
    print(f"TinyEmote written to {model} in {record['seconds'] / 60:.1f} min on {record['device']}")
    if args.install:
        from stableemote_utils.tinyemote import SHIPPED_DIR

        tmp = SHIPPED_DIR.with_name(SHIPPED_DIR.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp)
        if SHIPPED_DIR.exists():
            shutil.rmtree(SHIPPED_DIR)
        tmp.rename(SHIPPED_DIR)
        print(f"installed into {SHIPPED_DIR}; measure it with: stableemote evaluate-tiny --card")


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``pretrain-tiny`` and ``evaluate-tiny`` to the ``stableemote`` parser."""
    from stableemote_utils.pretrain import PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser(
        "pretrain-tiny",
        help="train TinyEmote (VAE, then UNet from scratch) on the offline emoji",
        description="Reproduce TinyEmote's weights from scratch: a small VAE on Noto and OpenMoji "
        "emoji, then a small UNet on the Noto training split's latents (held-out names never "
        "seen). Deterministic on one machine with the same thread count. Finished stages are "
        "kept: run it again to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output-dir", default=d.output_dir)
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument("--unet-steps", type=int, default=d.unet_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--fresh", action="store_true", help="do not resume the UNet stage")
    p.add_argument(
        "--install",
        action="store_true",
        help="copy the result over the package's shipped weights (what the tiny preset loads)",
    )
    p.set_defaults(func=cmd_pretrain)
