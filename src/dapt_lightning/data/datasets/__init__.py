"""Built-in dataset readers; importing this package registers them (see ``dapt_lightning.data.registry``)."""

from dapt_lightning.data.datasets import (
    caltech101,
    custom,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    synthetic,
    ucf101,
)
from dapt_lightning.data.datasets.common import DatasetError, DatasetLayout

LAYOUTS: dict[str, DatasetLayout] = {
    module.LAYOUT.name: module.LAYOUT
    for module in (
        imagenet,
        caltech101,
        oxford_pets,
        stanford_cars,
        oxford_flowers,
        food101,
        fgvc_aircraft,
        sun397,
        dtd,
        eurosat,
        ucf101,
        imagenetv2,
        imagenet_sketch,
        imagenet_a,
        imagenet_r,
    )
}
"""On-disk layout of every downloadable benchmark dataset, in CoOp's order (used by ``dapt data check``)."""

__all__ = ["LAYOUTS", "DatasetError", "DatasetLayout", "custom", "synthetic"]
