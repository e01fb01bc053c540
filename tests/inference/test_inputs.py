"""What a user hands a tuned model: images as files, folders and globs in any mix, and class names as a list, a
comma-separated string or a file; each bad input answered with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dapt_lightning.data.classnames import read_classnames
from dapt_lightning.data.image_files import ImageFilesDataset, expand_images, image_problem


def photo(path: Path, colour: str = "red", size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_files_folders_and_globs_expand_to_each_image_once(tmp_path: Path) -> None:
    a = photo(tmp_path / "photos" / "a.jpg")
    b = photo(tmp_path / "photos" / "trip" / "b.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    c = photo(tmp_path / "other" / "c.JPG")
    # A folder gives its images at any depth (not its text files); a glob and a file name add theirs, each once.
    found = expand_images([str(tmp_path / "photos"), str(tmp_path / "**" / "*.JPG"), str(a)])
    assert found == [str(a.resolve()), str(b.resolve()), str(c.resolve())]
    assert expand_images(str(tmp_path / "photos" / "**" / "*.png")) == [str(b.resolve())]


def test_a_named_file_that_is_missing_or_not_an_image_is_kept_to_be_reported(tmp_path: Path) -> None:
    good = photo(tmp_path / "good.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    missing = tmp_path / "missing.jpg"
    found = expand_images([str(good), str(text), str(missing)])
    assert found == [str(good.resolve()), str(text.resolve()), str(missing.resolve())]
    assert image_problem(str(good)) is None
    assert image_problem(str(missing)) == "no such file"
    assert image_problem(str(text)).startswith("not a decodable image (UnidentifiedImageError")


def test_nothing_to_classify_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--data.images: no image file found in .*empty"):
        expand_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--data.images: no image file found"):
        expand_images([str(tmp_path / "*.jpg"), str(tmp_path / "gone.jpg")])
    with pytest.raises(ValueError, match="no images named"):
        expand_images([])


def test_an_unreadable_file_becomes_a_marked_item_not_a_failed_run(tmp_path: Path) -> None:
    good = photo(tmp_path / "good.jpg", size=40)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:100])  # truncated
    dataset = ImageFilesDataset([str(good), str(broken)], lambda image: image.resize((8, 8)), image_size=8)
    image, label, index = dataset[0]
    assert (label, index) == (-1, 0) and image.size == (8, 8)
    zeros, label, index = dataset[1]
    assert (label, index) == (-2, 1) and zeros.shape == (3, 8, 8) and not zeros.any()


def test_class_names_come_as_a_list_a_comma_string_or_a_file(tmp_path: Path) -> None:
    assert read_classnames(["cat", " dog "]) == ["cat", "dog"]
    assert read_classnames("cat, dog,red fox") == ["cat", "dog", "red fox"]
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\ncat\n\nsnow leopard\n")
    assert read_classnames(str(names)) == ["cat", "snow leopard"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--model.classnames: no class names"),
        ("cat,dog,cat", "'cat' is given twice"),
        ("labels/classes.txt", "--model.classnames: no file labels/classes.txt"),
    ],
)
def test_bad_class_names_are_one_line_naming_the_setting(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        read_classnames(value)


def test_a_class_name_file_with_no_names_names_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "classes.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match=f"--model.classnames file {empty}: no class names"):
        read_classnames(str(empty))


def test_globs_in_folders_whose_names_hold_brackets_still_find_files(tmp_path: Path) -> None:
    # A folder named like a glob ("[2024] trip") is taken as a folder, not as a pattern.
    folder = tmp_path / "[2024] trip"
    image = photo(folder / "a.jpg")
    assert expand_images(str(folder)) == [str(image.resolve())]


def test_the_notebooks_figure_titles_each_image_with_its_top_classes(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from dapt_lightning.experiments.analysis import show_predictions

    images = [photo(tmp_path / f"{i}.png", colour) for i, colour in enumerate(("red", "blue", "green", "white"))]
    top = [[("red circle", 0.9), ("red square", 0.06), ("blue cross", 0.04)]] * 4
    figure = show_predictions(images, top, columns=3)
    titled = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titled == ["red circle 90.0%\nred square 6.0%\nblue cross 4.0%"] * 4
    assert len(figure.axes) == 6  # two rows of three, the last two left empty
