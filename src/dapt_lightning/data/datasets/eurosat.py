"""EuroSAT RGB (10 land-cover classes), as CoOp's ``EuroSAT`` reader."""

from __future__ import annotations

from pathlib import Path

from dapt_lightning.data.datasets.generated_splits import read_class_folder_dataset
from dapt_lightning.data.records import DatasetLayout, DatasetRecord, DownloadPlan, Requirement, Resource
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

_SPLIT = Resource(
    "split_zhou_EuroSAT.json", drive_id="1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o", dest="eurosat/split_zhou_EuroSAT.json"
)

LAYOUT = DatasetLayout(
    name="eurosat",
    folder="eurosat",
    requirements=(
        Requirement("eurosat/2750", "dir", "EuroSAT.zip (RGB) from https://github.com/phelber/EuroSAT"),
        Requirement(_SPLIT.dest, "file", _SPLIT.page_url(), unless=("eurosat/2750",)),
    ),
    split_file=_SPLIT.dest,
    image_dir="eurosat/2750",
)

DOWNLOAD = DownloadPlan(
    LAYOUT.name,
    (
        Resource(
            "EuroSAT.zip",
            "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
            "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
            "eurosat",
            extract=True,
            md5="c8fa014336c82ac7804f0398fcb19387",
        ),
        _SPLIT,
    ),
)


def read_eurosat(root: Path, **options: object) -> DatasetSplits:
    """Read ``ROOT/eurosat`` from its split file (or split the class folders 50/20/30 if absent)."""
    return read_class_folder_dataset(LAYOUT, root, options, new_cnames=NEW_CNAMES)


RECORD = DatasetRecord(
    name=LAYOUT.name,
    reader=read_eurosat,
    layout=LAYOUT,
    download=DOWNLOAD,
    template="a centered satellite photo of {}.",
    benchmark="fewshot",
    config="eurosat.yaml",
)
