"""Dataset readers on the generated fakes: class names, labels, item order and splits as the official readers."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_datasets import FAKES, IMAGENET_CLASSES, make_fake_dataset, make_fake_datasets
from tiny import SIZES, run_dapt, tiny_args

from dapt_lightning.data.datasets.checks import DatasetError
from dapt_lightning.data.datasets.synthetic import write_synthetic_dataset
from dapt_lightning.data.registry import get_dataset_reader, layouts, list_datasets
from dapt_lightning.data.types import Datum

BENCHMARKS = list(FAKES)
LAYOUTS = layouts()
SPLIT_DATASETS = [name for name in BENCHMARKS if LAYOUTS[name].split_file]


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("data")
    return root, make_fake_datasets(root)


def test_every_benchmark_and_custom_is_registered() -> None:
    assert set(BENCHMARKS) | {"custom"} <= set(list_datasets())
    assert set(LAYOUTS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reader_gives_classnames_and_split_sizes(fake_root: tuple[Path, dict], name: str) -> None:
    root, fakes = fake_root
    splits = get_dataset_reader(name)(root)
    assert splits.name == name
    assert splits.classnames == fakes[name].classnames
    for split, size in fakes[name].sizes.items():
        assert len(getattr(splits, split)) == size, split
    for item in splits.train + splits.val + splits.test:
        assert os.path.isfile(item.impath), item.impath
        assert splits.classnames[item.label] == item.classname


@pytest.mark.parametrize("name", SPLIT_DATASETS)
def test_split_file_is_read_in_order(fake_root: tuple[Path, dict], name: str) -> None:
    root, _ = fake_root
    layout = LAYOUTS[name]
    raw = json.loads((root / layout.split_file).read_text())
    splits = get_dataset_reader(name)(root)
    image_dir = str(root / layout.image_dir)
    for key in ("train", "val", "test"):
        expected = [Datum(os.path.join(image_dir, rel), label, cname) for rel, label, cname in raw[key]]
        assert getattr(splits, key) == expected


def test_imagenet_labels_sorted_folders_and_val_is_test(fake_root: tuple[Path, dict]) -> None:
    root, _ = fake_root
    splits = get_dataset_reader("imagenet")(root)
    assert splits.val == splits.test
    train_dir = root / "imagenet/images/train"
    for label, (wnid, name) in enumerate(IMAGENET_CLASSES[:4]):
        items = [item for item in splits.train if item.label == label]
        assert {item.classname for item in items} == {name}
        # Inside a class folder the official reader keeps os.listdir order (it decides the few-shot draw).
        listed = [n for n in os.listdir(train_dir / wnid) if not n.startswith(".")]
        assert [os.path.basename(item.impath) for item in items] == listed


def test_imagenet_a_and_r_label_their_200_class_subset(fake_root: tuple[Path, dict]) -> None:
    root, _ = fake_root
    for name, indices in (("imagenet_a", [1, 3, 4]), ("imagenet_r", [0, 2, 5])):
        splits = get_dataset_reader(name)(root)
        assert splits.train == [] and splits.val == []
        assert sorted({item.label for item in splits.test}) == [0, 1, 2]  # README.txt is not a class
        for label, index in enumerate(indices):
            wnid, cname = IMAGENET_CLASSES[index]
            items = [item for item in splits.test if item.label == label]
            assert items and all(f"/{wnid}/" in item.impath and item.classname == cname for item in items)


def test_imagenetv2_folder_number_is_classnames_line(fake_root: tuple[Path, dict]) -> None:
    root, _ = fake_root
    splits = get_dataset_reader("imagenetv2")(root)
    for item in splits.test:
        folder = int(Path(item.impath).parent.name)
        assert item.label == folder and item.classname == IMAGENET_CLASSES[folder][1]


def test_fgvc_uses_variant_lists_with_spaces_in_names(fake_root: tuple[Path, dict]) -> None:
    root, _ = fake_root
    splits = get_dataset_reader("fgvc_aircraft")(root)
    lines = (root / "fgvc_aircraft/images_variant_val.txt").read_text().splitlines()
    assert [(Path(i.impath).stem, i.classname) for i in splits.val] == [tuple(x.split(" ", 1)) for x in lines]
    assert splits.classnames[3] == "Falcon 900"


# --- splits generated when the split file is absent -----------------------------------------------------------


def _official_split_trainval(trainval: list[Datum], p_val: float = 0.2) -> tuple[list[Datum], list[Datum]]:
    """Re-statement of CoOp's OxfordPets.split_trainval (global random, defaultdict of indices)."""
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for _, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


@pytest.fixture
def global_random_state():
    state = random.getstate()
    yield
    random.setstate(state)


def test_oxford_pets_split_generated_as_official_first_run_with_seed_1(
    tmp_path: Path, global_random_state: None
) -> None:
    make_fake_dataset("oxford_pets", tmp_path)
    split_file = tmp_path / "oxford_pets/split_zhou_OxfordPets.json"
    split_file.unlink()
    splits = get_dataset_reader("oxford_pets")(tmp_path)

    image_dir = tmp_path / "oxford_pets/images"

    def read(name: str) -> list[Datum]:
        items = []
        for line in (tmp_path / "oxford_pets/annotations" / name).read_text().splitlines():
            stem, label, _, _ = line.split(" ")
            items.append(Datum(os.path.join(image_dir, stem + ".jpg"), int(label) - 1, stem.rsplit("_", 1)[0].lower()))
        return items

    random.seed(1)
    train, val = _official_split_trainval(read("trainval.txt"))
    assert (splits.train, splits.val, splits.test) == (train, val, read("test.txt"))
    # Saved as split_zhou JSON, relative to images/, and read back identically.
    saved = json.loads(split_file.read_text())
    assert saved["val"][0] == [os.path.basename(val[0].impath), val[0].label, val[0].classname]
    again = get_dataset_reader("oxford_pets")(tmp_path)
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)


def test_caltech101_split_generated_as_official_read_and_split_data(tmp_path: Path, global_random_state: None) -> None:
    make_fake_dataset("caltech101", tmp_path)
    (tmp_path / "caltech-101/split_zhou_Caltech101.json").unlink()
    splits = get_dataset_reader("caltech101")(tmp_path)

    image_dir = tmp_path / "caltech-101/101_ObjectCategories"
    renames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
    random.seed(1)
    categories = sorted(c for c in os.listdir(image_dir) if c not in ("BACKGROUND_Google", "Faces_easy"))
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        images = [os.path.join(image_dir, category, n) for n in os.listdir(image_dir / category)]
        random.shuffle(images)
        n_train, n_val = round(len(images) * 0.5), round(len(images) * 0.2)
        cname = renames.get(category, category)
        train += [Datum(p, label, cname) for p in images[:n_train]]
        val += [Datum(p, label, cname) for p in images[n_train : n_train + n_val]]
        test += [Datum(p, label, cname) for p in images[n_train + n_val :]]
    assert (splits.train, splits.val, splits.test) == (train, val, test)


@pytest.mark.parametrize("name", ["stanford_cars", "oxford_flowers", "sun397", "ucf101", "food101", "dtd", "eurosat"])
def test_generated_split_keeps_classnames_and_covers_every_image(tmp_path: Path, name: str) -> None:
    fake = make_fake_dataset(name, tmp_path)
    listed = get_dataset_reader(name)(tmp_path)
    (tmp_path / LAYOUTS[name].split_file).unlink()
    generated = get_dataset_reader(name)(tmp_path)
    assert generated.classnames == fake.classnames
    assert sorted(generated.train + generated.val + generated.test, key=repr) == sorted(
        listed.train + listed.val + listed.test, key=repr
    )
    for split in (generated.train, generated.val, generated.test):
        assert {item.label for item in split} == set(range(len(fake.classnames)))
    assert (tmp_path / LAYOUTS[name].split_file).is_file()


# --- errors ---------------------------------------------------------------------------------------------------


def test_missing_dataset_error_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        get_dataset_reader("oxford_pets")(tmp_path)
    message = str(err.value)
    assert "oxford_pets" in message and str(tmp_path / "oxford_pets/images") in message
    assert f"dapt data check --root {tmp_path}" in message and "dapt data download oxford_pets" in message


def test_missing_split_without_annotations_names_the_split_file(tmp_path: Path) -> None:
    make_fake_dataset("stanford_cars", tmp_path)
    (tmp_path / "stanford_cars/split_zhou_StanfordCars.json").unlink()
    (tmp_path / "stanford_cars/devkit/cars_meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match="split_zhou_StanfordCars.json"):
        get_dataset_reader("stanford_cars")(tmp_path)


@pytest.mark.parametrize("content", ["{not json", '["a", "b"]', '{"train": [], "val": []}', '{"train": [["a", 1]]}'])
def test_malformed_split_json_names_the_file(tmp_path: Path, content: str) -> None:
    make_fake_dataset("dtd", tmp_path)
    split_file = tmp_path / "dtd/split_zhou_DescribableTextures.json"
    split_file.write_text(content)
    with pytest.raises(DatasetError, match=str(split_file)):
        get_dataset_reader("dtd")(tmp_path)


def test_builtin_readers_reject_options(fake_root: tuple[Path, dict]) -> None:
    with pytest.raises(DatasetError, match="--data.dataset_options"):
        get_dataset_reader("dtd")(fake_root[0], path="x")


def test_unknown_wnid_names_classnames_file(tmp_path: Path) -> None:
    make_fake_dataset("imagenet_r", tmp_path)
    (tmp_path / "imagenet-rendition/imagenet-r/n99999999").mkdir()
    with pytest.raises(DatasetError, match="classnames.txt"):
        get_dataset_reader("imagenet_r")(tmp_path)


# --- custom ---------------------------------------------------------------------------------------------------


def _class_tree(folder: Path, classes: list[str], n: int) -> None:
    for cls in classes:
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            (folder / cls / f"{i:03d}.jpg").write_bytes(b"jpeg")
    (folder / classes[0] / "notes.txt").write_text("not an image")


def test_custom_one_folder_per_class_generates_and_saves_split(tmp_path: Path) -> None:
    _class_tree(tmp_path / "birds", ["blue_jay", "cardinal", "house_sparrow"], 10)
    (tmp_path / "birds/classnames.txt").write_text("not a class folder\n")
    read = get_dataset_reader("custom")
    splits = read(tmp_path, path="birds")
    assert splits.classnames == ["blue jay", "cardinal", "house sparrow"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 6, 9)
    assert all(item.impath.endswith(".jpg") for item in splits.train + splits.val + splits.test)
    saved = tmp_path / "birds/split_zhou_custom.json"
    assert saved.is_file()
    # The saved split wins over a different seed: the split never changes once written.
    again = read(tmp_path, path="birds", seed=99)
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)


def test_custom_train_test_tree_with_classnames_mapping(tmp_path: Path) -> None:
    dataset = tmp_path / "cells"
    _class_tree(dataset / "train", ["a01", "b02"], 10)
    _class_tree(dataset / "test", ["a01", "b02"], 3)
    (dataset / "names.json").write_text(json.dumps({"a01": "red blood cell", "b02": "platelet"}))
    splits = get_dataset_reader("custom")(tmp_path, path=str(dataset), classnames="names.json", save_split=False)
    assert splits.classnames == ["red blood cell", "platelet"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    assert not (dataset / "split_zhou_custom.json").exists()

    (dataset / "names.txt").write_text("a01 red blood cell\nb02 platelet\n")
    (dataset / "val").mkdir()
    _class_tree(dataset / "val", ["a01", "b02"], 2)
    splits = get_dataset_reader("custom")(tmp_path, path="cells", classnames="names.txt", save_split=False)
    assert splits.classnames == ["red blood cell", "platelet"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 4, 6)


def test_custom_split_json_and_option_errors(tmp_path: Path) -> None:
    dataset = tmp_path / "mine"
    dataset.mkdir()
    split = {"train": [["x/1.jpg", 0, "cat"]], "val": [], "test": [["x/2.jpg", 1, "dog"]]}
    (dataset / "split.json").write_text(json.dumps(split))
    splits = get_dataset_reader("custom")(tmp_path, path="mine", split_file="split.json", image_dir="imgs")
    assert splits.train == [Datum(os.path.join(dataset, "imgs", "x/1.jpg"), 0, "cat")]
    assert splits.classnames == ["cat", "dog"]
    with pytest.raises(DatasetError, match="unknown option.*colour"):
        get_dataset_reader("custom")(tmp_path, path="mine", colour="red")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_dataset_reader("custom")(tmp_path, path="nowhere")
    _class_tree(tmp_path / "tree", ["a", "b"], 10)
    with pytest.raises(DatasetError, match="no entry for the class folder"):
        (tmp_path / "tree/names.txt").write_text("a apple\n")
        get_dataset_reader("custom")(tmp_path, path="tree", classnames="names.txt")


def test_malformed_class_name_file_is_named(tmp_path: Path) -> None:
    make_fake_dataset("oxford_flowers", tmp_path)
    (tmp_path / "oxford_flowers/split_zhou_OxfordFlowers.json").unlink()  # generating the split reads the names
    (tmp_path / "oxford_flowers/cat_to_name.json").write_text('{"1": "pink primrose",', encoding="utf-8")
    with pytest.raises(DatasetError, match="class-name file .*cat_to_name.json is not valid JSON"):
        get_dataset_reader("oxford_flowers")(tmp_path)


def test_custom_empty_class_folder_is_named(tmp_path: Path) -> None:
    _class_tree(tmp_path / "birds", ["blue_jay", "cardinal", "wren"], 10)
    (tmp_path / "birds/robin").mkdir()  # empty
    (tmp_path / "birds/owl").mkdir()
    (tmp_path / "birds/owl/readme.txt").write_text("photos to come")  # no image either
    with pytest.raises(DatasetError, match="class folder.s. without images") as caught:
        get_dataset_reader("custom")(tmp_path, path="birds")
    assert str(tmp_path / "birds/robin") in str(caught.value) and str(tmp_path / "birds/owl") in str(caught.value)
    assert "blue_jay" not in str(caught.value)
    assert not (tmp_path / "birds/split_zhou_custom.json").exists()

    dataset = tmp_path / "cells"  # the same in a train/ and test/ tree
    _class_tree(dataset / "train", ["a01", "b02"], 10)
    _class_tree(dataset / "test", ["a01", "b02"], 3)
    (dataset / "test/b02/000.jpg").unlink()
    (dataset / "test/b02/001.jpg").unlink()
    (dataset / "test/b02/002.jpg").unlink()
    with pytest.raises(DatasetError, match=f"without images: {re.escape(str(dataset / 'test/b02'))} "):
        get_dataset_reader("custom")(tmp_path, path="cells")


def test_custom_folders_with_one_class_name_are_named(tmp_path: Path) -> None:
    _class_tree(tmp_path / "cars", ["red_car", "red car", "blue_car"], 10)
    with pytest.raises(DatasetError, match="'red car' and 'red_car' -> 'red car'") as caught:
        get_dataset_reader("custom")(tmp_path, path="cars")
    assert str(tmp_path / "cars") in str(caught.value) and "rename or merge" in str(caught.value)

    _class_tree(tmp_path / "cells", ["a01", "b02", "c03"], 10)
    (tmp_path / "cells/names.txt").write_text("a01 platelet\nb02 red blood cell\nc03 platelet\n")
    with pytest.raises(DatasetError, match="'a01' and 'c03' -> 'platelet'.*names.txt"):
        get_dataset_reader("custom")(tmp_path, path="cells", classnames="names.txt")


def test_custom_dataset_needs_two_classes(tmp_path: Path) -> None:
    _class_tree(tmp_path / "solo", ["cat"], 10)
    with pytest.raises(DatasetError, match="solo has 1 class .*only 'cat'.*at least two") as caught:
        get_dataset_reader("custom")(tmp_path, path="solo")
    assert str(tmp_path / "solo") in str(caught.value)

    _class_tree(tmp_path / "tree/train", ["cat"], 10)
    _class_tree(tmp_path / "tree/test", ["cat"], 3)
    with pytest.raises(DatasetError, match="tree has 1 class"):
        get_dataset_reader("custom")(tmp_path, path="tree")

    (tmp_path / "listed").mkdir()
    split = {"train": [["x/1.jpg", 0, "cat"]], "val": [["x/2.jpg", 0, "cat"]], "test": [["x/3.jpg", 0, "cat"]]}
    (tmp_path / "listed/split.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match="listed by .*split.json: only 'cat'"):
        get_dataset_reader("custom")(tmp_path, path="listed", split_file="split.json")


# --- the line that says a split was generated --------------------------------------------------------------------


@pytest.fixture
def console_lines() -> Iterator[list[str]]:
    """What Lightning's console logger prints during the test (rank_zero_info lines, as `dapt` shows them)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _split_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "split" in line]


def test_generated_split_is_said_once_with_where_it_was_saved(tmp_path: Path, console_lines: list[str]) -> None:
    make_fake_dataset("oxford_pets", tmp_path)
    split_file = tmp_path / "oxford_pets/split_zhou_OxfordPets.json"
    split_file.unlink()
    get_dataset_reader("oxford_pets")(tmp_path)
    get_dataset_reader("oxford_pets")(tmp_path)  # reads the saved file: nothing to say
    [line] = _split_lines(console_lines)
    assert "\n" not in line
    assert line.startswith("dataset 'oxford_pets': no split file split_zhou_OxfordPets.json, so a split was generated")
    assert "80/20 of each class of the train+val list, seed 1" in line
    assert line.endswith(
        f"seed 1) and saved to {split_file}; it is not the published split: download the official file to compare "
        "with published numbers"
    )


def test_generated_custom_split_says_where_it_went(tmp_path: Path, console_lines: list[str]) -> None:
    _class_tree(tmp_path / "birds", ["blue_jay", "cardinal"], 10)
    get_dataset_reader("custom")(tmp_path, path="birds")
    get_dataset_reader("custom")(tmp_path, path="birds", save_split=False)  # the saved file is read back
    get_dataset_reader("custom")(tmp_path, path="birds", split_file="other.json", save_split=False)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    get_dataset_reader("custom")(tmp_path, path="birds", split_file="../blocker/split.json")
    saved, unsaved, failed = _split_lines(console_lines)
    folder = tmp_path / "birds"
    assert saved == (
        f"dataset 'custom': no split_zhou_custom.json in {folder}, so the split was made from its folders (50%/20%/30% "
        f"of each class folder into train/val/test, seed 1) and saved to {folder / 'split_zhou_custom.json'}"
    )
    assert unsaved.endswith("; not saved (save_split is false): every run generates it again, identically")
    assert f"; could not save it to {folder / '../blocker/split.json'} (" in failed


@pytest.mark.slow
def test_dapt_fit_prints_the_generated_split_line_once(tmp_path: Path) -> None:
    source = tmp_path / "synthetic"
    write_synthetic_dataset(source, seed=0, image_size=64, sizes=SIZES)
    for class_dir in sorted((source / "images").iterdir())[:3]:
        shutil.copytree(class_dir, tmp_path / "data/mine" / class_dir.name)
    options = '{"path": "mine"}'
    args = ["--data.dataset", "custom", "--data.dataset_options", options]
    result = run_dapt(["fit", *tiny_args(tmp_path / "data", tmp_path / "run", *args)])
    console = (result.stdout + result.stderr).splitlines()
    lines = [line for line in console if "so the split was made from its folders" in line]
    assert lines == [
        f"dataset 'custom': no split_zhou_custom.json in {tmp_path / 'data/mine'}, so the split was made from its "
        "folders (50%/20%/30% of each class folder into train/val/test, seed 1) and saved to "
        f"{tmp_path / 'data/mine/split_zhou_custom.json'}"
    ]
