"""``dapt data check`` on full and partial fake data roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fake_datasets import FAKES, make_fake_datasets

from dapt_lightning.arguments import UsageError
from dapt_lightning.data.check import check_datasets, format_table
from dapt_lightning.data.cli import data_main
from dapt_lightning.data.registry import get_dataset_reader, layouts


@pytest.fixture
def full_root(tmp_path: Path) -> Path:
    make_fake_datasets(tmp_path)
    return tmp_path


def _by_name(root: Path, **kwargs) -> dict:
    return {s.name: s for s in check_datasets(root, **kwargs)}


def test_complete_fakes_are_all_found(full_root: Path) -> None:
    statuses = _by_name(full_root)
    assert set(statuses) == set(FAKES)
    assert {s.status for s in statuses.values()} == {"found"}
    assert all(s.num_images for s in statuses.values())


def test_partial_tree_names_exactly_what_is_missing(full_root: Path) -> None:
    root = full_root
    shutil.rmtree(root / "ucf101")
    shutil.rmtree(root / "oxford_pets/images")
    (root / "imagenet/classnames.txt").unlink()
    (root / "stanford_cars/split_zhou_StanfordCars.json").unlink()
    (root / "stanford_cars/devkit/cars_meta.mat").unlink()  # so the split cannot be generated either
    (root / "fgvc_aircraft/images_variant_val.txt").unlink()
    shutil.rmtree(root / "imagenet-rendition/imagenet-r")

    statuses = _by_name(root)
    missing = {name: {(item.path, item.kind) for item in s.missing} for name, s in statuses.items() if s.missing}
    assert missing == {
        "ucf101": {(root / "ucf101", "dir")},
        "oxford_pets": {(root / "oxford_pets/images", "dir")},
        "imagenet": {(root / "imagenet/classnames.txt", "file")},
        "stanford_cars": {(root / "stanford_cars/split_zhou_StanfordCars.json", "file")},
        "fgvc_aircraft": {(root / "fgvc_aircraft/images_variant_val.txt", "file")},
        "imagenet_r": {(root / "imagenet-rendition/imagenet-r", "dir")},
    }
    assert statuses["ucf101"].status == "missing"
    assert {n for n, s in statuses.items() if s.status == "incomplete"} == set(missing) - {"ucf101"}
    assert all(s.status == "found" for n, s in statuses.items() if n not in missing)
    assert "dapt data download oxford_pets" in statuses["oxford_pets"].how_to_get
    assert "image-net.org" in statuses["imagenet"].how_to_get

    table = format_table(list(statuses.values()))
    assert f"missing file: {root / 'imagenet/classnames.txt'}" in table
    assert "1hyarUivQE36mY6jSomru6Fjd" not in table  # caltech101 is complete: no instructions for it


def test_split_that_would_be_generated_is_a_note_and_nothing_is_written(full_root: Path) -> None:
    split = full_root / "oxford_pets/split_zhou_OxfordPets.json"
    split.unlink()
    status = _by_name(full_root, names=["oxford_pets"])["oxford_pets"]
    assert status.status == "found" and status.missing == []
    assert "will be generated" in status.notes[0]
    assert not split.exists()


def test_missing_images_and_bad_split_are_problems(full_root: Path) -> None:
    shutil.rmtree(full_root / "dtd/images/blotchy")
    (full_root / "sun397/split_zhou_SUN397.json").write_text("{oops")
    statuses = _by_name(full_root, names=["dtd", "sun397"])
    assert statuses["dtd"].status == "incomplete"
    assert "blotchy" in statuses["dtd"].problems[0]
    assert statuses["sun397"].status == "incomplete"
    assert "split_zhou_SUN397.json" in statuses["sun397"].problems[0]


def test_full_check_finds_a_single_missing_image(full_root: Path) -> None:
    splits = get_dataset_reader("food101")(full_root)
    # The default check looks at the first image of each class in each split (and the last of each list).
    sampled = set()
    for items in (splits.train, splits.val, splits.test):
        sampled |= {next(i.impath for i in items if i.label == label) for label in {i.label for i in items}}
        sampled.add(items[-1].impath)
    victim = next(i.impath for i in splits.train if i.impath not in sampled)
    Path(victim).unlink()
    assert check_datasets(full_root, names=["food101"])[0].status == "found"
    full = check_datasets(full_root, names=["food101"], full=True)[0]
    assert full.status == "incomplete"
    assert victim in full.problems[0]


def test_cli_check_exit_codes_and_env_root(full_root: Path, monkeypatch, capsys) -> None:
    assert data_main(["check", "--root", str(full_root)]) == 0
    shutil.rmtree(full_root / "eurosat")
    monkeypatch.setenv("DAPT_DATA_ROOT", str(full_root))
    assert data_main(["check", "eurosat", "dtd"]) == 1
    out = capsys.readouterr().out
    assert f"missing dir: {full_root / 'eurosat'}" in out
    assert data_main(["check"]) == 0  # without names it only reports
    assert data_main(["check", "--root", str(full_root / "nowhere")]) == 1
    with pytest.raises(UsageError):
        data_main(["check", "no_such_dataset", "--root", str(full_root)])


def test_check_lists_the_registered_layouts_in_coops_order(full_root: Path) -> None:
    assert [s.name for s in check_datasets(full_root)] == list(layouts())
    with pytest.raises(ValueError, match="unknown dataset.*synthetic; choose from imagenet, caltech101"):
        check_datasets(full_root, names=["synthetic"])


def test_full_check_decodes_every_image_and_lists_the_corrupt_ones(full_root: Path, capsys) -> None:
    splits = get_dataset_reader("food101")(full_root)
    victims = [splits.train[3].impath, splits.test[-1].impath]
    for victim in victims:  # cut short, as an interrupted extraction leaves them: they still exist
        data = Path(victim).read_bytes()
        Path(victim).write_bytes(data[: len(data) // 2])
    Path(splits.val[0].impath).write_bytes(b"not an image at all")
    victims.append(splits.val[0].impath)

    assert check_datasets(full_root, names=["food101"])[0].status == "found"  # the quick check only sees files
    status = check_datasets(full_root, names=["food101"], full=True)[0]
    assert status.status == "incomplete"
    corrupt = [problem for problem in status.problems if "corrupt image" in problem]
    assert len(corrupt) == 3
    assert [problem.split(" corrupt image ")[0] for problem in corrupt] == ["train:", "val:", "test:"]
    assert sorted(path for path in victims if any(path in problem for problem in corrupt)) == sorted(victims)
    assert "UnidentifiedImageError" in next(p for p in corrupt if splits.val[0].impath in p)

    assert data_main(["check", "food101", "--full", "--root", str(full_root)]) == 1
    out = capsys.readouterr().out
    assert all(f"corrupt image {path} (" in out for path in victims)
