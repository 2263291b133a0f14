"""Training on your own pictures: folder layouts, caption template, trigger word, captions record."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from stableemote_utils.captions import make_caption
from stableemote_utils.cli.main import main
from stableemote_utils.data import load_emoji_dataset
from stableemote_utils.errors import StableEmoteError

README = Path(__file__).resolve().parents[1] / "README.md"
COLOURS = ("red", "green", "blue", "orange")
SHAPES = ("circle", "square", "triangle")


def _picture(colour: str, shape: str, size: int = 40) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, 6), (size - 6, size - 6), (6, size - 6)], fill=colour)
    return image


def make_picture_folder(folder: Path) -> dict[str, str]:
    """12 pictures with ``.txt`` captions, half of them in a sub-folder: ``{path: caption}``."""
    captions = {}
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        sub = folder / ("more" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"pic{i:02d}.png"
        _picture(colour, shape).save(path)
        path.with_suffix(".txt").write_text(f"  a {colour}   {shape}\n")
        captions[str(path)] = f"a {colour} {shape}"
    return captions


def test_txt_captions_in_nested_folders_get_template_and_trigger_word(tmp_path):
    names = make_picture_folder(tmp_path)
    examples = load_emoji_dataset(
        str(tmp_path), 16, "A drawing of {}", split="all", trigger_word="sks"
    )
    assert {e.source: e.caption for e in examples} == {
        path: f"sks, A drawing of {name}" for path, name in names.items()
    }
    assert all(e.image.size == (16, 16) for e in examples)


def test_pictures_alone_are_captioned_by_file_name(tmp_path):
    _picture("red", "circle").save(tmp_path / "red_heart.png")
    (tmp_path / "cats").mkdir()
    _picture("blue", "square").save(tmp_path / "cats" / "grumpy_cat.jpg")
    examples = load_emoji_dataset(str(tmp_path), 16, split="all")
    assert sorted(e.caption for e in examples) == [
        "An emoji of grumpy cat",
        "An emoji of red heart",
    ]


def test_both_placeholders_work_and_a_template_without_one_is_refused():
    assert make_caption("cat", "An emoji of {name}") == make_caption("cat", "An emoji of {}")
    assert make_caption("cat", "{} and {name}", "zz") == "zz, cat and cat"
    for bad in ("An emoji", "An emoji of {what}", "An emoji of {"):
        with pytest.raises(StableEmoteError, match="caption-template"):
            load_emoji_dataset("noto", 16, caption_template=bad)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "holds no images"),
        (lambda d: (d / "lonely.txt").write_text("cat"), "lonely.txt' has no image beside it"),
        (
            lambda d: (_picture("red", "circle").save(d / "a.png"), (d / "a.txt").write_text(" ")),
            "a.txt' is empty",
        ),
        (
            lambda d: (
                _picture("red", "circle").save(d / "a.png"),
                (d / "a.txt").write_bytes(b"\xff\xfe\xfa"),
            ),
            "Cannot read the caption file",
        ),
    ],
    ids=["no images", "caption without image", "empty caption", "caption not utf-8"],
)
def test_bad_folders_get_one_clear_line(tmp_path, capsys, short_run, make, message):
    make(tmp_path)
    code = main(short_run.argv(tmp_path / "run", dataset=tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def _readme_command() -> list[str]:
    """The command the README's "Train on your own pictures" section shows."""
    section = README.read_text().split("## Train on your own pictures", 1)[1].split("\n## ", 1)[0]
    [line] = re.findall(r"^stableemote train .*$", section, flags=re.M)
    return shlex.split(line)[1:]


def test_the_readme_command_trains_on_a_folder_of_captioned_pictures(tmp_path, capsys, short_run):
    names = make_picture_folder(tmp_path / "my_emoji")
    argv = _readme_command()
    argv[argv.index("--dataset") + 1] = str(tmp_path / "my_emoji")
    out = tmp_path / "outputs" / "my-emoji"
    argv[argv.index("--output-dir") + 1] = str(out)
    argv += short_run.argv(out, steps=2)[3:]  # tiny-random, CPU, a few steps
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    template, trigger = (
        argv[argv.index("--caption-template") + 1],
        argv[argv.index("--trigger-word") + 1],
    )
    assert {r["source"]: r["caption"] for r in rows} == {
        path: f"{trigger}, {template.format(name)}" for path, name in names.items()
    }
    assert {r["split"] for r in rows} <= {"train", "heldout"}
    # The base model's grid (step 0) beside the last one, one column per validation prompt.
    prompts = argv[argv.index("--validation-prompts") + 1].split(",")
    grids = sorted((out / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000000.png", "step-000002.png"]
    sizes = {Image.open(g).size for g in grids}
    assert len(sizes) == 1
    width = sizes.pop()[0]
    assert width % len(prompts) == 0 and width // len(prompts) >= 64
