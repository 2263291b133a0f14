"""Secrets, the adapter's model card, and pushing an adapter to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from stableemote_utils.errors import StableEmoteError
from stableemote_utils.presets import SD15_MODEL_ID, is_hub_model_id

# The Hub's licence ids. Share-alike data passes its licence on to what is trained on it.
DATASET_LICENCES = {
    "openmoji": "cc-by-sa-4.0",
    "noto": "ofl-1.1",
    "Norod78/microsoft-fluentui-emoji-512-whitebg": "mit",
}
SHARE_ALIKE_DATASETS = ("openmoji",)
SD15_LICENCE = "creativeml-openrail-m"
# The tags the Hub files an SD 1.5 LoRA under, then the course's own.
LORA_TAGS = (
    "lora",
    "text-to-image",
    "diffusers",
    "stable-diffusion",
    "template:sd-lora",
    "emoji",
    "stableemote",
)
# The last validation grid's pictures, one per prompt, for the model card's widget gallery.
WIDGET_PICTURE = "samples/widget-{i}.png"

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


def _is_hub_id(model: str) -> bool:
    """``owner/name`` that is not a folder on this machine."""
    return is_hub_model_id(model) and not Path(model).expanduser().exists()


def adapter_licence(dataset: str, base_model: str | None) -> str:
    """The Hub licence id for an adapter: share-alike data binds it; else the base model's
    (SD 1.5's CreativeML OpenRAIL-M); else the data's; else ``"other"``."""
    if dataset in SHARE_ALIKE_DATASETS:
        return DATASET_LICENCES[dataset]
    if base_model == SD15_MODEL_ID:
        return SD15_LICENCE
    return DATASET_LICENCES.get(dataset, "other")


def write_model_card(out: Path, config, heldout: dict[int, float], preset) -> Path:
    """Write ``README.md`` for the adapter with huggingface_hub's ``ModelCard``.

    Its metadata follows the Hub's conventions for a LoRA: ``base_model`` (a Hub id; for
    TinyEmote or a local folder the text says which model, and the field is left out),
    ``license``, ``library_name: diffusers``, the tags the Hub files LoRAs under
    (``lora``, ``text-to-image``, ``diffusers``, ``stable-diffusion``, ``template:sd-lora``),
    the trigger word as ``instance_prompt``, and a widget gallery of the run's last
    validation pictures (``samples/widget-N.png``, one per prompt).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from stableemote_utils.captions import make_caption

    dataset, model = str(config.dataset), str(config.model)
    base_model = model if _is_hub_id(model) else None
    licence_note = DATASET_LICENCE_NOTES.get(
        dataset, "has the licence its publisher gives; check it."
    )
    base_text = {
        "tiny": "TinyEmote, the small model of SD 1.5's architecture shipped with the StableEmote "
        "course (not on the Hub)",
        "tiny-random": "the StableEmote course's tiny model with random weights (not on the Hub)",
    }.get(preset.name, f"`{model}`")
    prompts = [
        make_caption(n, config.caption_template, config.trigger_word)
        for n in config.validation_prompts
    ]
    widget = [
        {"text": prompt, "output": {"url": WIDGET_PICTURE.format(i=i)}}
        for i, prompt in enumerate(prompts)
        if (out / WIDGET_PICTURE.format(i=i)).is_file()
    ]
    data = ModelCardData(
        base_model=base_model,
        license=adapter_licence(dataset, base_model),
        library_name="diffusers",
        tags=list(LORA_TAGS),
        instance_prompt=config.trigger_word,
        widget=widget or None,
    )
    steps = sorted(heldout)
    held = (
        f"Held-out loss (fixed timesteps and noise, on pictures never seen in training): "
        f"{heldout[steps[0]]:.4f} before training, {heldout[steps[-1]]:.4f} after {steps[-1]} steps."
        if steps
        else "No held-out pictures: the held-out loss was not measured."
    )
    trigger = (
        f"Trigger word: `{config.trigger_word}` (every training caption begins with it).\n"
        if config.trigger_word
        else ""
    )
    cfg = json.dumps(config.to_dict(), indent=1, default=str)
    body = f"""# Emoji LoRA (StableEmote)

A rank-{config.rank} LoRA on the UNet layers {", ".join(config.target_modules)} of
{base_text}, trained with the StableEmote course's `stableemote train`.

{trigger}
- Data: `{dataset}`, captions "{config.caption_template}". The data {licence_note}
- {config.steps} steps, batch {config.batch_size} x {config.gradient_accumulation_steps} accumulation steps, {config.resolution_px} px, learning rate {config.learning_rate} ({config.lr_scheduler}).
- {held}

Use it with diffusers:

```python
pipe.load_lora_weights("<this repo or folder>")
```

Training config:

```json
{cfg}
```
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = out / "README.md"
    card.save(path)
    return path


def hub_token() -> str | None:
    """The Hub token, from ``huggingface_hub.get_token()``: ``$HF_TOKEN``, a saved
    ``hf auth login`` / ``huggingface_hub.login()``, or Colab's secrets. Never printed."""
    from huggingface_hub import get_token

    return get_token()


NO_TOKEN_MESSAGE = (
    "Pushing to the Hub needs a token with write access: log in once with "
    "`hf auth login` (or huggingface_hub.login()), set HF_TOKEN, or on Colab add "
    "HF_TOKEN to the secrets (the key icon) and grant this notebook access."
)


def check_push_target(repo_id: str) -> None:
    """Refuse, before any work, a push that cannot happen: ``repo_id`` breaks the Hub's
    rules for repo ids (``huggingface_hub``'s ``validate_repo_id``), or no token is found
    (:func:`hub_token`; never printed). Whether the token may write there is the Hub's to say.

    Raises:
        StableEmoteError: naming ``--push-to-hub`` and what to do.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        why = " ".join(str(err).split())
        raise StableEmoteError(
            f"--push-to-hub {repo_id!r} is not a Hub repo id. {why} Use your-name/emoji-lora."
        ) from None
    if not hub_token():
        raise StableEmoteError(f"--push-to-hub {repo_id}: {NO_TOKEN_MESSAGE}")


def push_adapter(out: Path, repo_id: str, token: str | None = None) -> str:
    """Upload only the adapter file, its model card and the last sample grid (never checkpoints).

    Returns:
        The repo URL.
    """
    from huggingface_hub import HfApi

    token = token or hub_token()
    if not token:
        raise StableEmoteError(NO_TOKEN_MESSAGE)
    adapter = out / "pytorch_lora_weights.safetensors"
    if not adapter.exists():
        raise StableEmoteError(f"No adapter at {adapter}; train to the end before pushing.")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copy2(adapter, stage / adapter.name)
        if (out / "README.md").exists():
            shutil.copy2(out / "README.md", stage / "README.md")
        samples = sorted((out / "samples").glob("step-*.png")) if (out / "samples").is_dir() else []
        for picture in [*samples[-1:], *sorted((out / "samples").glob("widget-*.png"))]:
            (stage / "samples").mkdir(exist_ok=True)
            shutil.copy2(picture, stage / "samples" / picture.name)
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
