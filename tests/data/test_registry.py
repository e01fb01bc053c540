"""The dataset registry: records, the tables derived from them, and the shipped per-dataset configs, which carry
the official DAPT settings (SPEC.md's table, restated here)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from dapt_lightning.data import registry
from dapt_lightning.data.records import DatasetRecord
from dapt_lightning.data.registry import (
    CONFIG_DIR,
    benchmark_datasets,
    config_path,
    dataset_template,
    download_plans,
    get_dataset,
    get_dataset_reader,
    layouts,
    list_datasets,
    register_dataset,
)
from dapt_lightning.experiments.sweep.results import DG_TARGETS, PAPER_DATASETS
from dapt_lightning.model.prompted_clip import GENERIC_TEMPLATE
from dapt_lightning.schedule import official_max_epochs

COOP_FEWSHOT = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
COOP_DOMAIN_SHIFT = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")

# dataset config -> (registered dataset, LR, beta_v, beta_t), from the official configs.
OFFICIAL = {
    "imagenet": ("imagenet", 2.0, 0.01, 0.01),
    "caltech101": ("caltech101", 0.2, 10, 0.01),
    "oxfordpets": ("oxford_pets", 0.02, 10, 0.1),
    "stanfordcars": ("stanford_cars", 0.002, 100, 0.1),
    "flowers102": ("oxford_flowers", 0.002, 10, 0.01),
    "food101": ("food101", 20, 10, 0.01),
    "fgvcaircraft": ("fgvc_aircraft", 2.0, 100, 0.01),
    "sun397": ("sun397", 20, 100, 0.01),
    "dtd": ("dtd", 20, 100, 0.01),
    "eurosat": ("eurosat", 20, 100, 10),
    "ucf101": ("ucf101", 20, 0.1, 0.1),
    "imagenetv2": ("imagenetv2", 2.0, 0.01, 0.01),
    "imagenet_sketch": ("imagenet_sketch", 2.0, 0.01, 0.01),
    "imagenet_a": ("imagenet_a", 2.0, 0.01, 0.01),
    "imagenet_r": ("imagenet_r", 2.0, 0.01, 0.01),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_dataset_config_has_the_official_settings(name: str) -> None:
    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    dataset, lr, beta_v, beta_t = OFFICIAL[name]
    assert config["data"]["dataset"] == dataset and dataset in list_datasets()
    assert get_dataset(dataset).config == f"{name}.yaml"
    assert config["model"]["class_path"] == "dapt_lightning.methods.DAPT"
    settings = config["model"]["init_args"]
    assert (settings["lr"], settings["beta_v"], settings["beta_t"]) == (lr, beta_v, beta_t)
    assert (settings["clip_name"], settings["pretrained"]) == ("ViT-B-16", "openai")
    assert "root" not in config["data"], "the data root comes from --data.root or $DAPT_DATA_ROOT"
    # Epochs are derived from the shot count, never pinned in a dataset config.
    assert config.get("trainer", {}).get("max_epochs") is None
    if name in ("imagenet", "oxfordpets"):
        assert config["data"]["batch_size"] == 32 and config["data"]["test_batch_size"] == 100


def test_every_benchmark_has_a_config() -> None:
    shipped = {yaml.safe_load(p.read_text())["data"]["dataset"] for p in CONFIG_DIR.glob("*.yaml") if p.stem != "demo"}
    assert shipped == {dataset for dataset, *_ in OFFICIAL.values()}


@pytest.mark.parametrize(
    ("dataset", "shots", "epochs"),
    [
        ("oxford_pets", 1, 50),
        ("dtd", 4, 100),
        ("sun397", 8, 200),
        ("imagenet", 16, 50),
        ("imagenet_r", 2, 50),
        ("imagenet_like", 16, 200),  # not registered: the shot count decides, whatever the name
        ("custom", 16, 200),
    ],
)
def test_epochs_follow_the_shot_count(dataset: str, shots: int, epochs: int) -> None:
    assert official_max_epochs(dataset, shots) == epochs


# --- the registry -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_datasets())
def test_every_record_config_exists_and_names_its_dataset(name: str) -> None:
    path = config_path(name)
    if name == "custom":
        assert path is None
        return
    assert path is not None and path.is_file(), f"dataset {name!r}: config {path} does not exist"
    assert path.parent == CONFIG_DIR and path.is_absolute()
    assert yaml.safe_load(path.read_text())["data"]["dataset"] == name


def test_every_shipped_config_belongs_to_a_record() -> None:
    shipped = {path.name for path in CONFIG_DIR.glob("*.yaml")}
    assert shipped == {get_dataset(name).config for name in list_datasets()} - {None}
    assert config_path("synthetic") == CONFIG_DIR / "demo.yaml"


def test_benchmarks_are_coops_datasets_in_coops_order() -> None:
    assert benchmark_datasets("fewshot") == COOP_FEWSHOT == PAPER_DATASETS
    assert benchmark_datasets("domain_shift") == COOP_DOMAIN_SHIFT == DG_TARGETS
    assert {get_dataset(name).max_epochs for name in COOP_DOMAIN_SHIFT + ("imagenet",)} == {50}
    with pytest.raises(ValueError, match="fewshot"):
        benchmark_datasets("few-shot")


def test_derived_tables_match_the_records() -> None:
    records = [get_dataset(name) for name in list_datasets()]
    assert layouts() == {r.name: r.layout for r in records if r.layout is not None}
    assert download_plans() == {r.name: r.download for r in records if r.download is not None}
    # Registry order is CoOp's: the check and the download list datasets in the papers' order.
    assert tuple(layouts()) == tuple(download_plans()) == COOP_FEWSHOT + COOP_DOMAIN_SHIFT
    for record in records:
        assert get_dataset_reader(record.name) is record.reader
        assert dataset_template(record.name) == record.template
        for part in (record.layout, record.download):
            assert part is None or part.name == record.name
    assert {r.name for r in records if r.layout is None} == {"custom", "synthetic"}


def test_every_split_file_a_layout_needs_is_downloaded() -> None:
    plans = download_plans()
    for name, layout in layouts().items():
        if layout.split_file:
            assert layout.split_file in {res.dest for res in plans[name].resources}, name


def test_dataset_template() -> None:
    assert dataset_template("oxford_pets") == "a photo of a {}, a type of pet."
    assert dataset_template("dtd") == "{} texture."
    assert dataset_template("imagenet") == dataset_template("synthetic") == GENERIC_TEMPLATE
    assert dataset_template("not_registered") == GENERIC_TEMPLATE


def test_unknown_dataset_lists_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"--data.dataset: unknown dataset 'oxfordpets'; choose one of .*oxford_pets"):
        get_dataset("oxfordpets")


def test_register_dataset_adds_a_users_dataset_and_refuses_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    record = DatasetRecord(name="my_birds", reader=get_dataset_reader("custom"), template="a photo of a {}, a bird.")
    assert register_dataset(record) is record
    assert get_dataset("my_birds") is record and "my_birds" in list_datasets()
    assert dataset_template("my_birds") == "a photo of a {}, a bird." and config_path("my_birds") is None
    assert "my_birds" not in layouts() and "my_birds" not in benchmark_datasets("fewshot")
    with pytest.raises(ValueError, match="'my_birds' is already registered"):
        register_dataset(dataclasses.replace(record, template="{}."))
    with pytest.raises(ValueError, match="'oxford_pets' is already registered"):
        register_dataset(get_dataset("oxford_pets"))
    assert get_dataset("my_birds") is record


def test_register_dataset_refuses_inconsistent_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    pets = get_dataset("oxford_pets")
    with pytest.raises(ValueError, match="DatasetLayout is named 'oxford_pets'"):
        register_dataset(dataclasses.replace(pets, name="pets2"))
    with pytest.raises(ValueError, match="benchmark 'zeroshot'"):
        register_dataset(DatasetRecord(name="pets3", reader=pets.reader, benchmark="zeroshot"))
    assert "pets2" not in list_datasets() and "pets3" not in list_datasets()
