"""The text-to-image data folder (Hugging Face "imagefolder" layout): what is read, and each broken
metadata file named with its line and the fix, before any model is loaded."""

import json

import pytest
from diffusion_kernel.errors import ConfigError, FileAccessError
from diffusion_kernel_vision.training.captioned_images import captioned_folder, image_folder
from PIL import Image


def _images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / name)


def _jsonl(folder, *records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_jsonl_csv_subfolders_and_caption_lists_are_read(tmp_path):
    _images(tmp_path / "a", "0.png", "1.jpg")
    _jsonl(tmp_path / "a", {"file_name": "0.png", "text": "red"},
           {"file_name": "1.jpg", "text": ["dark", "black"]})
    _images(tmp_path / "a" / "sub", "2.png")
    (tmp_path / "a" / "sub" / "metadata.csv").write_text("file_name,text\n2.png,\"a, b\"\n")
    images = captioned_folder(tmp_path / "a")
    assert [p.name for p in images.paths] == ["0.png", "1.jpg", "2.png"]
    assert images.captions == (("red",), ("dark", "black"), ("a, b",))
    assert images.pixels(0, 4).shape == (3, 4, 4)


def test_a_hub_dataset_folder_is_read_from_train(tmp_path):
    _images(tmp_path / "repo" / "train", "0.png")
    _jsonl(tmp_path / "repo" / "train", {"file_name": "0.png", "caption": "x"})
    _images(tmp_path / "repo" / "test", "9.png")  # another split: not training data
    _jsonl(tmp_path / "repo" / "test", {"file_name": "9.png", "caption": "y"})
    (tmp_path / "repo" / "README.md").write_text("a dataset card")
    images = captioned_folder(tmp_path / "repo", caption_column="caption")
    assert images.folder == tmp_path / "repo" / "train" and images.captions == (("x",),)


@pytest.mark.parametrize("records, error, words", [
    (['{"file_name": "0.png", "text": "a"', {"file_name": "1.png", "text": "b"}], ConfigError,
     ["metadata.jsonl:1 is not valid JSON", "one object"]),
    ([["0.png", "a"], {"file_name": "1.png", "text": "b"}], ConfigError,
     ["metadata.jsonl:1 is a JSON list"]),
    ([{"file_name": "0.png", "text": "a"}, {"text": "b"}], ConfigError,
     ["metadata.jsonl:2 has no file_name", '"file_name": "0001.png"']),
    ([{"file_name": "0.png", "text": "a"}, {"file_name": "1.png", "text": 3}], ConfigError,
     ["(1.png)", "a string or a non-empty list of strings"]),
    ([{"file_name": "0.png", "text": "a"}, {"file_name": "2.png", "text": "b"}], FileAccessError,
     ["names 2.png, which is not in"]),
    ([{"file_name": "0.png", "text": "a"}], ConfigError,
     ["1 images in", "have no metadata line (1.png)", "add a line for each"]),
    ([{"file_name": "0.png", "text": "a"}, {"file_name": "1.png", "text": "b"},
      {"file_name": "0.png", "text": "c"}], ConfigError,
     ["metadata.jsonl:3: 0.png is listed twice"]),
])
def test_broken_metadata_is_named_with_its_line_and_fix(tmp_path, records, error, words):
    _images(tmp_path, "0.png", "1.png")
    _jsonl(tmp_path, *records)
    with pytest.raises(error) as caught:
        captioned_folder(tmp_path)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_a_missing_folder_and_a_folder_without_images_are_named(tmp_path):
    with pytest.raises(FileAccessError, match="does not exist or is not a folder"):
        captioned_folder(tmp_path / "nowhere")
    with pytest.raises(FileAccessError, match="no images .* put the training images there"):
        image_folder(tmp_path, "instance image folder")
