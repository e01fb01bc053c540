"""Few-shot sampling and base/new subsampling against a re-statement of the Dassl/CoOp procedure."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import pytest
from fake_datasets import make_fake_dataset

from dapt_lightning.data.fewshot import fewshot_splits, sample_per_class, subsample_classes
from dapt_lightning.data.registry import get_dataset_reader
from dapt_lightning.data.types import DatasetSplits, Datum


def dassl_generate_fewshot(data_source: list[Datum], num_shots: int) -> list[Datum]:
    """Dassl's DatasetBase.generate_fewshot_dataset (repeat=False), drawing from the global ``random``."""
    if num_shots < 1:
        return data_source
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _, items in tracker.items():
        dataset.extend(random.sample(items, num_shots) if len(items) >= num_shots else items)
    return dataset


def coop_subsample(*args: list[Datum], subsample: str) -> list[list[Datum]]:
    """CoOp's OxfordPets.subsample_classes."""
    if subsample == "all":
        return list(args)
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return [[Datum(i.impath, relabeler[i.label], i.classname) for i in data if i.label in selected] for data in args]


@pytest.fixture(autouse=True)
def _restore_global_random():
    state = random.getstate()
    yield
    random.setstate(state)


def _interleaved_splits(num_classes: int = 7, per_class: int = 20) -> DatasetSplits:
    """Classes appear out of label order and interleaved, to exercise first-appearance ordering."""
    rng = random.Random(0)
    order = list(range(num_classes))
    rng.shuffle(order)
    items = [Datum(f"/img/{c}_{i}.jpg", c, f"class {c}") for i in range(per_class) for c in order]
    val = [Datum(f"/val/{c}_{i}.jpg", c, f"class {c}") for c in order for i in range(rng.randint(1, 9))]
    test = [Datum(f"/test/{c}_{i}.jpg", c, f"class {c}") for c in range(num_classes) for i in range(3)]
    return DatasetSplits("interleaved", items, val, test)


def _official(splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Datum], list[Datum]]:
    random.seed(seed)  # Dassl's set_random_seed, then the dataset's __init__ draws train, then val
    train = dassl_generate_fewshot(splits.train, shots)
    val = dassl_generate_fewshot(splits.val, min(shots, 4))
    return train, val


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16, 32])
def test_fewshot_matches_dassl(seed: int, shots: int) -> None:
    splits = _interleaved_splits()
    train, val = _official(splits, shots, seed)
    random.seed(12345)  # the sampler must not depend on the global stream
    ours = fewshot_splits(splits, shots, seed)
    assert ours.train == train
    assert ours.val == val
    assert ours.test == splits.test and ours.classnames == splits.classnames


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fewshot_on_a_fake_dataset_read_from_disk(tmp_path: Path, seed: int) -> None:
    make_fake_dataset("oxford_pets", tmp_path)
    splits = get_dataset_reader("oxford_pets")(tmp_path)
    for shots in (1, 2, 4):
        train, val = _official(splits, shots, seed)
        ours = fewshot_splits(splits, shots, seed)
        assert (ours.train, ours.val) == (train, val)


def test_zero_shots_keeps_everything() -> None:
    splits = _interleaved_splits()
    assert fewshot_splits(splits, 0, 1).train == splits.train


@pytest.mark.parametrize("subsample", ["all", "base", "new"])
@pytest.mark.parametrize("num_classes", [6, 7])
def test_base_new_matches_coop_after_fewshot(subsample: str, num_classes: int) -> None:
    splits = fewshot_splits(_interleaved_splits(num_classes), 4, 1)
    train, val, test = coop_subsample(splits.train, splits.val, splits.test, subsample=subsample)
    ours = subsample_classes(splits, subsample)  # type: ignore[arg-type]
    assert (ours.train, ours.val, ours.test) == (train, val, test)
    labels = sorted({i.label for i in splits.train})
    half = math.ceil(len(labels) / 2)
    kept = labels if subsample == "all" else labels[:half] if subsample == "base" else labels[half:]
    assert ours.classnames == [f"class {c}" for c in kept]


def test_imagenet_val_is_not_fewshot_sampled_and_draws_nothing_from_the_stream() -> None:
    items = [Datum(f"/x/{c}_{i}.jpg", c, f"class {c}") for c in range(3) for i in range(10)]
    splits = DatasetSplits("imagenet", list(items), list(items), list(items), fewshot_val=False)
    sampled = fewshot_splits(splits, num_shots=2, seed=1)
    assert sampled.val == items  # the whole val (= test) set, as the official ImageNet reader
    rng = random.Random(1)
    assert sampled.train == sample_per_class(items, 2, rng)
