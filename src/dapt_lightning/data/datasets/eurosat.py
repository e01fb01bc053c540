"""EuroSAT RGB (10 land-cover classes), as CoOp's ``EuroSAT`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.common import (
    DatasetLayout,
    Requirement,
    read_class_folder_dataset,
)
from dapt_lightning.data.registry import register_dataset
from dapt_lightning.data.types import DatasetSplits

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}

LAYOUT = DatasetLayout(
    name="eurosat",
    folder="eurosat",
    requirements=(
        Requirement("eurosat/2750", "dir", "EuroSAT.zip (RGB) from https://github.com/phelber/EuroSAT"),
        Requirement(
            "eurosat/split_zhou_EuroSAT.json",
            "file",
            "https://drive.google.com/file/d/1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o/view",
            unless=("eurosat/2750",),
        ),
    ),
    split_file="eurosat/split_zhou_EuroSAT.json",
    image_dir="eurosat/2750",
)


@register_dataset("eurosat")
def read_eurosat(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/eurosat`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options, new_cnames=NEW_CNAMES)
