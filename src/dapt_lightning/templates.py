"""Hand-crafted zero-shot prompts per dataset: CoOp's per-dataset templates (its ``CUSTOM_TEMPLATES``).

Zero-shot CLIP in the papers' tables uses these; ``--model.template`` defaults to the dataset's entry for
``--model.method zeroshot`` (the CLI resolves it from ``--data.dataset``).
"""

from __future__ import annotations

GENERIC_TEMPLATE = "a photo of a {}."

DATASET_TEMPLATES: dict[str, str] = {
    "imagenet": GENERIC_TEMPLATE,
    "imagenetv2": GENERIC_TEMPLATE,
    "imagenet_sketch": GENERIC_TEMPLATE,
    "imagenet_a": GENERIC_TEMPLATE,
    "imagenet_r": GENERIC_TEMPLATE,
    "caltech101": GENERIC_TEMPLATE,
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": GENERIC_TEMPLATE,
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": GENERIC_TEMPLATE,
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "synthetic": GENERIC_TEMPLATE,
}


def dataset_template(dataset: str) -> str:
    """The zero-shot template of ``dataset`` (``{}`` is the class name); the generic one for unknown datasets."""
    return DATASET_TEMPLATES.get(dataset, GENERIC_TEMPLATE)
