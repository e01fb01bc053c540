"""Seeded generator of tiny fake copies of every benchmark dataset, in the real on-disk layout.

Each fake has a handful of classes and images (8x8 JPEGs) and the real annotation formats: split_zhou JSONs,
``.mat`` files (``scipy.io.savemat``) where the official readers load them, and the datasets' own text lists.
The class names a reader should produce are recorded independently in :class:`FakeDataset` so tests can check them.

Usage: ``make_fake_datasets(tmp_path)`` (all) or ``make_fake_dataset("oxford_pets", tmp_path)``; run as a script
(``python tests/fake_datasets.py DIR``) to write a fake data root for manual trials.
"""

from __future__ import annotations

import io
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

IMAGENET_CLASSES = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
]
"""(wnid, CLIP class name) of the fake ImageNet family, in wnid order as the real classnames.txt."""


@dataclass
class FakeDataset:
    """What a reader must return for a fake: class names by label and the split sizes."""

    name: str
    classnames: list[str]
    sizes: dict[str, int] = field(default_factory=dict)


class _Writer:
    """Writes images and text files below a dataset folder; image bytes are encoded once per colour."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._jpegs: list[bytes] = []
        for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
            self._jpegs.append(buffer.getvalue())

    def image(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rng.choice(self._jpegs))

    @staticmethod
    def text(path: Path, lines: list[str], newline: str = "\n") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + newline for line in lines), encoding="utf-8")

    def split_json(self, path: Path, rows_per_class: list[list[list[object]]], fractions=(0.5, 0.2)) -> dict:
        """Shuffle each class's rows and cut them into train/val/test; write the split_zhou JSON."""
        split: dict[str, list] = {"train": [], "val": [], "test": []}
        for rows in rows_per_class:
            rows = list(rows)
            self.rng.shuffle(rows)
            n_train, n_val = round(len(rows) * fractions[0]), round(len(rows) * fractions[1])
            split["train"] += rows[:n_train]
            split["val"] += rows[n_train : n_train + n_val]
            split["test"] += rows[n_train + n_val :]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(split, indent=4), encoding="utf-8")
        return split


def _sizes(split: dict) -> dict[str, int]:
    return {key: len(rows) for key, rows in split.items()}


def _class_folder_dataset(
    w: _Writer, image_dir: Path, split_path: Path, folders: list[str], names: dict[str, str], n: int, pattern: str
) -> dict:
    """Folders of ``n`` images each and a split JSON whose class names go through ``names``."""
    rows_per_class = []
    for label, folder in enumerate(folders):
        rows = []
        for i in range(1, n + 1):
            rel = f"{folder}/{pattern.format(folder=folder, i=i)}"
            w.image(image_dir / rel)
            rows.append([rel, label, names.get(folder, folder)])
        rows_per_class.append(rows)
    return w.split_json(split_path, rows_per_class)


def fake_imagenet(root: Path, w: _Writer) -> FakeDataset:
    d = root / "imagenet"
    classes = IMAGENET_CLASSES[:4]
    for wnid, _ in classes:
        for i in range(6):
            w.image(d / "images/train" / wnid / f"{wnid}_{1000 + i}.JPEG")
        for _ in range(3):
            w.image(d / "images/val" / wnid / f"ILSVRC2012_val_{w.rng.randrange(10**8):08d}.JPEG")
    w.text(d / "classnames.txt", [f"{wnid} {name}" for wnid, name in classes])
    return FakeDataset("imagenet", [name for _, name in classes], {"train": 24, "val": 12, "test": 12})


def fake_caltech101(root: Path, w: _Writer) -> FakeDataset:
    d = root / "caltech-101"
    folders = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "accordion", "airplanes"]
    for folder in ("BACKGROUND_Google", "Faces_easy"):
        for i in range(1, 4):
            w.image(d / "101_ObjectCategories" / folder / f"image_{i:04d}.jpg")
    kept = [f for f in folders if f not in ("BACKGROUND_Google", "Faces_easy")]
    names = {"Faces": "face", "Leopards": "leopard", "airplanes": "airplane"}
    split = _class_folder_dataset(
        w, d / "101_ObjectCategories", d / "split_zhou_Caltech101.json", kept, names, 10, "image_{i:04d}.jpg"
    )
    return FakeDataset("caltech101", ["face", "leopard", "accordion", "airplane"], _sizes(split))


def fake_oxford_pets(root: Path, w: _Writer) -> FakeDataset:
    d = root / "oxford_pets"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("great_pyrenees", 2)]
    trainval, test, rows_trainval, rows_test = [], [], [], []
    for class_id, (breed, species) in enumerate(breeds, 1):
        for i in range(1, 11):
            stem = f"{breed}_{100 + i}"
            w.image(d / "images" / f"{stem}.jpg")
            line = f"{stem} {class_id} {species} {i}"
            row = [f"{stem}.jpg", class_id - 1, breed.lower()]
            (trainval if i <= 7 else test).append(line)
            (rows_trainval if i <= 7 else rows_test).append(row)
    w.text(d / "annotations/trainval.txt", trainval)
    w.text(d / "annotations/test.txt", test)
    w.text(d / "annotations/list.txt", ["#Image CLASS-ID SPECIES BREED ID", *trainval, *test])
    w.rng.shuffle(rows_trainval)
    split = {"train": rows_trainval[:-8], "val": rows_trainval[-8:], "test": rows_test}
    (d / "split_zhou_OxfordPets.json").write_text(json.dumps(split), encoding="utf-8")
    return FakeDataset("oxford_pets", [b.lower() for b, _ in breeds], _sizes(split))


def _cars_annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    names = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    records = np.zeros((1, len(rows)), dtype=[(n, "O") for n in names])
    for i, (fname, cls) in enumerate(rows):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 7, 7)]
        records[0, i] = (*box, np.array([[cls]], dtype=np.uint8), np.array([fname]))
    return records


def fake_stanford_cars(root: Path, w: _Writer) -> FakeDataset:
    d = root / "stanford_cars"
    models = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"]
    expected = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi TTS Coupe"]
    train_rows, test_rows, split_train, split_test = [], [], [], []
    for folder, rows, split_rows, per_class in (
        ("cars_train", train_rows, split_train, 6),
        ("cars_test", test_rows, split_test, 3),
    ):
        for i in range(len(models) * per_class):
            fname, cls = f"{i + 1:05d}.jpg", i % len(models) + 1
            w.image(d / folder / fname)
            rows.append((fname, cls))
            split_rows.append([f"{folder}/{fname}", cls - 1, expected[cls - 1]])
    (d / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(str(d / "devkit/cars_train_annos.mat"), {"annotations": _cars_annotations(train_rows)})
    savemat(str(d / "cars_test_annos_withlabels.mat"), {"annotations": _cars_annotations(test_rows)})
    class_names = np.empty((1, len(models)), dtype=object)
    class_names[0, :] = models
    savemat(str(d / "devkit/cars_meta.mat"), {"class_names": class_names})
    w.rng.shuffle(split_train)
    split = {"train": split_train[3:], "val": split_train[:3], "test": split_test}
    (d / "split_zhou_StanfordCars.json").write_text(json.dumps(split), encoding="utf-8")
    return FakeDataset("stanford_cars", expected, _sizes(split))


def fake_oxford_flowers(root: Path, w: _Writer) -> FakeDataset:
    d = root / "oxford_flowers"
    names = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells"}
    labels = [lab for lab in (1, 2, 3) for _ in range(10)]
    w.rng.shuffle(labels)  # classes interleaved, as in the real imagelabels.mat
    rows_per_class: list[list[list[object]]] = [[], [], []]
    for i, label in enumerate(labels, 1):
        w.image(d / "jpg" / f"image_{i:05d}.jpg")
        rows_per_class[label - 1].append([f"image_{i:05d}.jpg", label - 1, names[str(label)]])
    savemat(str(d / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    (d / "cat_to_name.json").write_text(json.dumps(names), encoding="utf-8")
    split = w.split_json(d / "split_zhou_OxfordFlowers.json", rows_per_class)
    return FakeDataset("oxford_flowers", list(names.values()), _sizes(split))


def fake_food101(root: Path, w: _Writer) -> FakeDataset:
    d = root / "food-101"
    folders = ["apple_pie", "baby_back_ribs", "baklava"]
    split = _class_folder_dataset(w, d / "images", d / "split_zhou_Food101.json", folders, {}, 10, "{i}00{i}.jpg")
    w.text(d / "meta/classes.txt", folders)
    w.text(d / "README.txt", ["fake Food-101"])
    w.text(d / "license_agreement.txt", ["fake"])
    return FakeDataset("food101", folders, _sizes(split))


def fake_fgvc_aircraft(root: Path, w: _Writer) -> FakeDataset:
    d = root / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F-16A/B", "Falcon 900"]
    sizes = {}
    image_id = 1000000
    for split, per_class in (("train", 4), ("val", 2), ("test", 3)):
        lines = []
        for _ in range(per_class):
            for variant in variants:
                image_id += 7
                w.image(d / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variant}")
        w.rng.shuffle(lines)
        w.text(d / f"images_variant_{split}.txt", lines)
        w.text(d / f"images_family_{split}.txt", [f"{line.split(' ')[0]} Boeing" for line in lines])
        sizes[split] = len(lines)
    w.text(d / "variants.txt", variants)
    w.text(d / "families.txt", ["Boeing 707", "A300", "F-16", "Falcon 900"])
    return FakeDataset("fgvc_aircraft", variants, sizes)


def fake_sun397(root: Path, w: _Writer) -> FakeDataset:
    d = root / "sun397"
    folders = ["a/abbey", "a/apartment_building/outdoor", "b/bedroom"]
    expected = ["abbey", "outdoor apartment_building", "bedroom"]
    training, testing, rows_per_class = [], [], []
    for label, folder in enumerate(folders):
        rows = []
        for i in range(10):
            rel = f"{folder}/sun_{w.rng.randrange(16**8):08x}.jpg"
            w.image(d / "SUN397" / rel)
            (training if i < 6 else testing).append("/" + rel)
            rows.append([rel, label, expected[label]])
        rows_per_class.append(rows)
    w.text(d / "ClassName.txt", ["/" + f for f in folders])
    w.text(d / "Training_01.txt", training)
    w.text(d / "Testing_01.txt", testing)
    split = w.split_json(d / "split_zhou_SUN397.json", rows_per_class)
    return FakeDataset("sun397", expected, _sizes(split))


def fake_dtd(root: Path, w: _Writer) -> FakeDataset:
    d = root / "dtd"
    folders = ["banded", "blotchy", "braided"]
    split = _class_folder_dataset(
        w, d / "images", d / "split_zhou_DescribableTextures.json", folders, {}, 10, "{folder}_{i:04d}.jpg"
    )
    w.text(d / "labels/train1.txt", [f"banded/banded_{i:04d}.jpg" for i in range(1, 4)])
    (d / "imdb").mkdir(parents=True, exist_ok=True)
    savemat(str(d / "imdb/imdb.mat"), {"images": np.zeros((1, 1))})
    return FakeDataset("dtd", folders, _sizes(split))


def fake_eurosat(root: Path, w: _Writer) -> FakeDataset:
    d = root / "eurosat"
    folders = ["AnnualCrop", "Forest", "SeaLake"]
    names = {"AnnualCrop": "Annual Crop Land", "SeaLake": "Sea or Lake"}
    split = _class_folder_dataset(w, d / "2750", d / "split_zhou_EuroSAT.json", folders, names, 10, "{folder}_{i}.jpg")
    return FakeDataset("eurosat", ["Annual Crop Land", "Forest", "Sea or Lake"], _sizes(split))


def fake_ucf101(root: Path, w: _Writer) -> FakeDataset:
    d = root / "ucf101"
    actions = ["ApplyEyeMakeup", "Archery", "YoYo"]
    renamed = ["Apply_Eye_Makeup", "Archery", "Yo_Yo"]
    train_lines, test_lines, rows_per_class = [], [], []
    for label, (action, folder) in enumerate(zip(actions, renamed, strict=True)):
        rows = []
        for group in range(1, 11):
            clip = f"v_{action}_g{group:02d}_c01"
            w.image(d / "UCF-101-midframes" / folder / f"{clip}.jpg")
            if group <= 6:
                train_lines.append(f"{action}/{clip}.avi {label + 1}")
            else:
                test_lines.append(f"{action}/{clip}.avi")
            rows.append([f"{folder}/{clip}.jpg", label, folder])
        rows_per_class.append(rows)
    # The real UCF101 lists use Windows line endings.
    lists = d / "ucfTrainTestlist"
    w.text(lists / "classInd.txt", [f"{i} {a}" for i, a in enumerate(actions, 1)], newline="\r\n")
    w.text(lists / "trainlist01.txt", train_lines, newline="\r\n")
    w.text(lists / "testlist01.txt", test_lines, newline="\r\n")
    split = w.split_json(d / "split_zhou_UCF101.json", rows_per_class)
    return FakeDataset("ucf101", renamed, _sizes(split))


def fake_imagenetv2(root: Path, w: _Writer) -> FakeDataset:
    d = root / "imagenetv2"
    for label in range(len(IMAGENET_CLASSES)):
        for _ in range(2):
            w.image(d / "imagenetv2-matched-frequency-format-val" / str(label) / f"{w.rng.randrange(16**10):010x}.jpeg")
    w.text(d / "classnames.txt", [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES])
    return FakeDataset("imagenetv2", [n for _, n in IMAGENET_CLASSES], {"test": 2 * len(IMAGENET_CLASSES)})


def _fake_wnid_variant(root: Path, w: _Writer, name: str, folder: str, sub: str, wnids: list[int]) -> FakeDataset:
    d = root / folder
    for index in wnids:
        for i in range(3):
            w.image(d / sub / IMAGENET_CLASSES[index][0] / f"{sub}_{i}.jpg")
    w.text(d / "classnames.txt", [f"{wnid} {cname}" for wnid, cname in IMAGENET_CLASSES])
    return FakeDataset(name, [IMAGENET_CLASSES[i][1] for i in sorted(wnids)], {"test": 3 * len(wnids)})


def fake_imagenet_sketch(root: Path, w: _Writer) -> FakeDataset:
    return _fake_wnid_variant(root, w, "imagenet_sketch", "imagenet-sketch", "images", list(range(6)))


def fake_imagenet_a(root: Path, w: _Writer) -> FakeDataset:
    fake = _fake_wnid_variant(root, w, "imagenet_a", "imagenet-adversarial", "imagenet-a", [1, 3, 4])
    w.text(root / "imagenet-adversarial/imagenet-a/README.txt", ["ImageNet-A: 200 classes"])
    return fake


def fake_imagenet_r(root: Path, w: _Writer) -> FakeDataset:
    fake = _fake_wnid_variant(root, w, "imagenet_r", "imagenet-rendition", "imagenet-r", [0, 2, 5])
    w.text(root / "imagenet-rendition/imagenet-r/README.txt", ["ImageNet-R: 200 classes"])
    return fake


FAKES: dict[str, Callable[[Path, _Writer], FakeDataset]] = {
    "imagenet": fake_imagenet,
    "caltech101": fake_caltech101,
    "oxford_pets": fake_oxford_pets,
    "stanford_cars": fake_stanford_cars,
    "oxford_flowers": fake_oxford_flowers,
    "food101": fake_food101,
    "fgvc_aircraft": fake_fgvc_aircraft,
    "sun397": fake_sun397,
    "dtd": fake_dtd,
    "eurosat": fake_eurosat,
    "ucf101": fake_ucf101,
    "imagenetv2": fake_imagenetv2,
    "imagenet_sketch": fake_imagenet_sketch,
    "imagenet_a": fake_imagenet_a,
    "imagenet_r": fake_imagenet_r,
}
"""Generator of each registered benchmark dataset's fake."""


def make_fake_dataset(name: str, root: Path, seed: int = 0) -> FakeDataset:
    """Write the fake of ``name`` under the data root ``root``; the same seed writes the same files."""
    return FAKES[name](Path(root), _Writer(seed))


def make_fake_datasets(root: Path, names: list[str] | None = None, seed: int = 0) -> dict[str, FakeDataset]:
    """Write the fakes of ``names`` (default: all) under ``root``."""
    return {name: make_fake_dataset(name, root, seed) for name in (names or list(FAKES))}


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_data")
    made = make_fake_datasets(target)
    print(f"wrote {len(made)} fake datasets under {target}")
