"""The shipped per-dataset configs carry the official DAPT settings (SPEC.md's table, restated here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dapt_lightning.data.registry import list_datasets
from dapt_lightning.schedule import official_max_epochs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

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
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    dataset, lr, beta_v, beta_t = OFFICIAL[name]
    assert config["data"]["dataset"] == dataset and dataset in list_datasets()
    assert (config["model"]["lr"], config["model"]["beta_v"], config["model"]["beta_t"]) == (lr, beta_v, beta_t)
    assert config["model"]["method"] == "dapt"
    assert (config["model"]["clip_name"], config["model"]["pretrained"]) == ("ViT-B-16", "openai")
    assert "root" not in config["data"], "the data root comes from --data.root or $DAPT_DATA_ROOT"
    # Epochs are derived from the shot count, never pinned in a dataset config.
    assert config.get("trainer", {}).get("max_epochs") is None
    if name in ("imagenet", "oxfordpets"):
        assert config["data"]["batch_size"] == 32 and config["data"]["test_batch_size"] == 100


def test_every_benchmark_has_a_config() -> None:
    shipped = {yaml.safe_load(p.read_text())["data"]["dataset"] for p in CONFIGS.glob("*.yaml") if p.stem != "demo"}
    assert shipped == {dataset for dataset, *_ in OFFICIAL.values()}


@pytest.mark.parametrize(
    ("dataset", "shots", "epochs"), [("oxford_pets", 1, 50), ("dtd", 4, 100), ("sun397", 8, 200), ("imagenet", 16, 50)]
)
def test_epochs_follow_the_shot_count(dataset: str, shots: int, epochs: int) -> None:
    assert official_max_epochs(dataset, shots) == epochs
