import pytest

from stableemote_utils import hub
from stableemote_utils.errors import StableEmoteError


class FakeApi:
    """Records what would be uploaded instead of talking to the Hub."""

    uploaded: list[str] = []
    tokens: list[str] = []

    def __init__(self, token=None):
        FakeApi.tokens.append(token)

    def create_repo(self, repo_id, exist_ok=False):
        assert exist_ok

    def upload_folder(self, folder_path, repo_id, commit_message):
        from pathlib import Path

        FakeApi.uploaded = sorted(
            str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()
        )


def _run_folder(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "checkpoint-000010").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-000010" / "optimizer.safetensors").write_bytes(b"x" * 100)
    (out / "samples").mkdir()
    (out / "samples" / "step-000005.png").write_bytes(b"png")
    (out / "samples" / "step-000010.png").write_bytes(b"png")
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    (out / "README.md").write_text("card")
    return out


def test_push_uploads_only_adapter_card_and_last_samples(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_for_test")
    url = hub.push_adapter(_run_folder(tmp_path), "someone/emoji-lora")
    assert url.endswith("someone/emoji-lora")
    assert FakeApi.uploaded == [
        "README.md",
        "pytorch_lora_weights.safetensors",
        "samples/step-000010.png",
    ]
    assert FakeApi.tokens[-1] == "hf_secret_value_for_test"
    captured = capsys.readouterr()
    assert "hf_secret_value_for_test" not in captured.out + captured.err


def test_push_without_token_says_how_to_add_one(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(StableEmoteError, match="HF_TOKEN"):
        hub.push_adapter(_run_folder(tmp_path), "someone/emoji-lora")


def test_read_secret_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    assert hub.read_secret("WANDB_API_KEY") == "abc"
    monkeypatch.delenv("WANDB_API_KEY")
    assert hub.read_secret("WANDB_API_KEY") is None  # not on Colab
