"""A corrupt image ends the run with one line naming it: in the main process, from a DataLoader worker, and
through ``dapt fit``."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import pytest
from PIL import Image
from tiny import SIZES, tiny_args
from torch._utils import ExceptionWrapper
from torch.utils.data import DataLoader

from dapt_lightning.data.datasets.synthetic import FOLDER, write_synthetic_dataset
from dapt_lightning.data.image_dataset import ImageListDataset, ImageLoadError, unwrap_worker_error
from dapt_lightning.data.transforms import build_transform
from dapt_lightning.data.types import Datum


def write_truncated_jpeg(path: Path) -> None:
    """A JPEG cut short, as an interrupted download or extraction leaves it: its header still opens."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    path = tmp_path / "my photos" / "cat 01.jpg"  # spaces in the path: the message must still name it whole
    path.parent.mkdir()
    write_truncated_jpeg(path)
    with Image.open(path) as image:  # the header is intact: only decoding finds the damage
        assert image.size == (64, 64)
    return path


def _dataset(*paths: Path) -> ImageListDataset:
    items = [Datum(str(path), 0, "cat") for path in paths]
    return ImageListDataset(items, build_transform("test", 32), "oxford_pets")


def _assert_one_line_naming(error: ImageLoadError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(f"dataset 'oxford_pets': image {path} cannot be decoded"), message
    assert "re-download or replace it" in message
    assert error.path == str(path)


def test_truncated_image_in_the_main_process(truncated: Path) -> None:
    with pytest.raises(ImageLoadError) as caught:
        _dataset(truncated)[0]
    _assert_one_line_naming(caught.value, truncated)


def test_truncated_image_in_a_dataloader_worker(truncated: Path) -> None:
    loader = DataLoader(_dataset(truncated), batch_size=1, num_workers=1)
    with pytest.raises(ImageLoadError) as caught:
        next(iter(loader))
    # PyTorch rebuilt the error from the worker's traceback text; it still reads as one line naming the file.
    _assert_one_line_naming(caught.value, truncated)
    assert unwrap_worker_error(caught.value) is caught.value


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    with pytest.raises(ImageLoadError, match="is listed in the split but does not exist") as caught:
        _dataset(path)[0]
    assert caught.value.path == str(path) and "\n" not in str(caught.value)


def test_error_survives_pickling(truncated: Path) -> None:
    with pytest.raises(ImageLoadError) as caught:
        _dataset(truncated)[0]
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is ImageLoadError
    assert (str(copy), copy.path) == (str(caught.value), caught.value.path)


def test_unwrap_worker_error_finds_the_image_behind_other_errors(truncated: Path) -> None:
    try:
        _dataset(truncated)[0]
    except ImageLoadError:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0")
    # What PyTorch raises when it cannot rebuild the error type: a RuntimeError holding the worker's traceback.
    wrapped = RuntimeError(f"Caught {wrapper.exc_type.__name__} {wrapper.where}.\nOriginal {wrapper.exc_msg}")
    found = unwrap_worker_error(wrapped)
    assert found is not None
    _assert_one_line_naming(found, truncated)
    # An error raised while handling one (or from one) leads back to it.
    try:
        try:
            _dataset(truncated)[0]
        except ImageLoadError as error:
            raise RuntimeError("the training step failed") from error
    except RuntimeError as outer:
        found = unwrap_worker_error(outer)
    assert found is not None and found.path == str(truncated)
    assert unwrap_worker_error(ValueError("something else")) is None


@pytest.mark.parametrize("workers", [0, 1])
def test_dapt_fit_over_a_corrupt_image_ends_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    from dapt_lightning.cli import main  # here, so that the dataset's tests do not depend on the whole CLI

    root = tmp_path / "data"
    write_synthetic_dataset(root / FOLDER, seed=0, image_size=64, sizes=SIZES)
    for image in sorted((root / FOLDER).rglob("*.jpg")) + sorted((root / FOLDER).rglob("*.png")):
        write_truncated_jpeg(image)  # every image: whichever the few-shot sampler picks is corrupt
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(root, tmp_path / "run"), "--data.num_workers", str(workers)])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err[-2].startswith(f"dapt: error: dataset 'synthetic': image {root / FOLDER}"), err
    assert "cannot be decoded" in err[-2]
    assert "DAPT_DEBUG" in err[-1]
