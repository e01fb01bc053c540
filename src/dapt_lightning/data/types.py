"""Plain records shared by every dataset reader and the few-shot sampler."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Datum:
    """One labelled image, as in Dassl: an absolute image path, an integer label and its class name."""

    impath: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """The full (not yet few-shot) train/val/test lists of one dataset.

    ``classnames[label]`` is the class name of ``label``; test-only datasets have empty ``train`` and ``val``.
    ``fewshot_val`` False keeps ``val`` whole in few-shot runs (ImageNet, whose val set is its test set).
    """

    name: str
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str] = field(default_factory=list)
    fewshot_val: bool = True

    def __post_init__(self) -> None:
        if not self.classnames:
            self.classnames = classnames_from_items(self.train + self.val + self.test)


def classnames_from_items(items: list[Datum]) -> list[str]:
    """Class names indexed by label, as Dassl's ``get_lab2cname`` (the last name seen for a label wins)."""
    mapping: dict[int, str] = {}
    for item in items:
        mapping[item.label] = item.classname
    if not mapping:
        return []
    return [mapping.get(label, "") for label in range(max(mapping) + 1)]
