import huggingface_hub
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
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(StableEmoteError, match="HF_TOKEN"):
        hub.push_adapter(_run_folder(tmp_path), "someone/emoji-lora")


def test_read_secret_prefers_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    assert hub.read_secret("WANDB_API_KEY") == "abc"
    monkeypatch.delenv("WANDB_API_KEY")
    assert hub.read_secret("WANDB_API_KEY") is None  # not on Colab


def _short_push_run(tmp_path, short_run, capsys, monkeypatch, *extra):
    from stableemote_utils.cli.main import main

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "run"
    argv = short_run.argv(out, "--push-to-hub", "someone/emoji-lora", *extra, steps=2)
    assert main(argv) == 0, capsys.readouterr().err
    return out


def test_model_card_follows_the_hubs_lora_conventions(tmp_path, short_run, capsys, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", "hf_card_test_token")
    out = _short_push_run(
        tmp_path, short_run, capsys, monkeypatch, "--trigger-word", "zq", "--validation-prompts",
        "cat face, red heart",
    )  # fmt: skip
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "ofl-1.1"  # tiny-random trains on Noto (OFL)
    for tag in ("lora", "text-to-image", "diffusers", "stable-diffusion", "template:sd-lora"):
        assert tag in data["tags"]
    assert "base_model" not in data and "not on the Hub" in card.text  # a tiny model
    assert data["instance_prompt"] == "zq"
    assert [w["text"] for w in data["widget"]] == [
        "zq, An emoji of cat face",
        "zq, An emoji of red heart",
    ]
    for w in data["widget"]:
        assert (out / w["output"]["url"]).is_file()
        assert w["output"]["url"] in FakeApi.uploaded  # the gallery's pictures go up too


def test_a_hub_base_model_is_named_and_sd15_sets_the_licence(tmp_path):
    from huggingface_hub import ModelCard

    from stableemote_utils.presets import get_preset
    from stableemote_utils.training_config import recipe

    config = recipe("original", model="stable-diffusion-v1-5/stable-diffusion-v1-5", batch_size=8,
                    resolution_px=256, dataset="valhalla/emoji-dataset")  # fmt: skip
    hub.write_model_card(tmp_path, config, {}, get_preset("sd15"))
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data.license == "creativeml-openrail-m"
    assert hub.adapter_licence("openmoji", data.base_model) == "cc-by-sa-4.0"  # share-alike


def test_the_token_appears_in_no_output(tmp_path, short_run, capsys, monkeypatch):
    token = "hf_NeverPrintMe0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = _short_push_run(tmp_path, short_run, capsys, monkeypatch, "--report-to", "tensorboard")
    captured = capsys.readouterr()
    assert FakeApi.tokens[-1] == token
    assert token not in captured.out + captured.err
    for path in out.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_push_with_a_token_saved_by_login_gets_past_the_token_check(tmp_path, monkeypatch):
    from huggingface_hub import constants, hf_api

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    # login() asks the Hub who the token belongs to: answered here, offline.
    monkeypatch.setattr(
        hf_api, "whoami", lambda token=None, **kw: {"name": "someone", "auth": {"accessToken": {"displayName": "t", "role": "write"}}}
    )  # fmt: skip
    huggingface_hub.login(token="hf_saved_by_login_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert hub.push_adapter(_run_folder(tmp_path), "someone/emoji-lora").endswith("emoji-lora")
    assert FakeApi.tokens[-1] == "hf_saved_by_login_token"
