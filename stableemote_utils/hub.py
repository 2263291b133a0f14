"""Secrets, the adapter's model card, and pushing an adapter to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from stableemote_utils.errors import StableEmoteError

DATASET_LICENCE_NOTES = {
    "valhalla/emoji-dataset": "has no stated licence and probably holds vendor emoji art; "
    "check the terms before publishing anything trained on it.",
    "noto": "is rendered from Google's Noto Color Emoji font (SIL Open Font License 1.1).",
    "openmoji": "is OpenMoji 17 (CC BY-SA 4.0): an adapter trained on it is shared alike, and "
    "credits 'All emojis designed by OpenMoji - the open-source emoji and icon project'.",
    "Norod78/microsoft-fluentui-emoji-512-whitebg": "is Microsoft's Fluent UI Emoji (MIT).",
}


def read_secret(name: str) -> str | None:
    """A token from the environment, else from Colab's secrets; ``None`` if neither has it.

    The value is never printed or logged.
    """
    value = os.environ.get(name)
    if value:
        return value
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get(name)
    except Exception:  # not on Colab, or the secret is not granted to this notebook
        return None


def write_model_card(out: Path, config, heldout: dict[int, float], preset) -> Path:
    """Write ``README.md`` for the adapter: base model, data and its licence, config, results."""
    dataset = str(config.dataset)
    licence = DATASET_LICENCE_NOTES.get(dataset, "has the licence its publisher gives; check it.")
    steps = sorted(heldout)
    held = (
        f"Held-out loss (fixed timesteps and noise, on emoji never seen in training): "
        f"{heldout[steps[0]]:.4f} before training, {heldout[steps[-1]]:.4f} after {steps[-1]} steps."
        if steps
        else ""
    )
    samples = sorted((out / "samples").glob("*.png")) if (out / "samples").is_dir() else []
    sample_line = f"![samples](samples/{samples[-1].name})" if samples else ""
    cfg = json.dumps(config.to_dict(), indent=1, default=str)
    base = {"tiny": "TinyEmote (shipped with StableEmote)", "tiny-random": "tiny-random"}.get(
        preset.name, config.model
    )
    text = f"""---
base_model: {base}
library_name: diffusers
tags: [stable-diffusion, lora, emoji, stableemote]
---
# Emoji LoRA (StableEmote)

A rank-{config.rank} LoRA on the UNet attention projections (to_q, to_k, to_v, to_out.0) of
`{config.model}`, trained with the StableEmote course's `stableemote train`.

- Data: `{dataset}`, captions "{config.caption_template}". The data {licence}
- {config.steps} steps, batch {config.batch_size} x {config.gradient_accumulation_steps} accumulation steps, {config.resolution_px} px, learning rate {config.learning_rate} ({config.lr_scheduler}).
- {held}

{sample_line}

Use it with diffusers:

```python
pipe.load_lora_weights("<this repo or folder>")
```

Training config:

```json
{cfg}
```
"""
    path = out / "README.md"
    path.write_text(text)
    return path


def push_adapter(out: Path, repo_id: str, token: str | None = None) -> str:
    """Upload only the adapter file, its model card and the last sample grid (never checkpoints).

    Returns:
        The repo URL.
    """
    from huggingface_hub import HfApi

    token = token or read_secret("HF_TOKEN")
    if not token:
        raise StableEmoteError(
            "Pushing to the Hub needs a token with write access: set HF_TOKEN in the environment "
            "or add it to Colab's secrets (the key icon) and grant this notebook access."
        )
    adapter = out / "pytorch_lora_weights.safetensors"
    if not adapter.exists():
        raise StableEmoteError(f"No adapter at {adapter}; train to the end before pushing.")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copy2(adapter, stage / adapter.name)
        if (out / "README.md").exists():
            shutil.copy2(out / "README.md", stage / "README.md")
        samples = sorted((out / "samples").glob("*.png")) if (out / "samples").is_dir() else []
        if samples:
            (stage / "samples").mkdir()
            shutil.copy2(samples[-1], stage / "samples" / samples[-1].name)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(
                folder_path=str(stage), repo_id=repo_id, commit_message="Upload emoji LoRA"
            )
        except Exception as err:
            raise StableEmoteError(
                f"Could not push to the Hub repo '{repo_id}' ({type(err).__name__}). Check the repo "
                "name (user/name), that the token has write access, and the network."
            ) from err
    return f"https://huggingface.co/{repo_id}"
