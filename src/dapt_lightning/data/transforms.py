"""Image transforms on a CLIP's own preprocessing: the CoOp/Dassl training augmentation (SPEC.md), and open_clip's
evaluation transform for the model's pretrained configuration.

Training keeps the paper's RandomResizedCrop scale and flip (not open_clip's ``preprocess_train``, which crops and
flips differently) with the model's interpolation and normalisation. Evaluation is exactly open_clip's: for OpenAI's
CLIP, resize the short side and centre-crop, as CoOp; for SigLIP, squash to a square; and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from open_clip.transform import PreprocessCfg, image_transform_v2
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TransformName = Literal["train", "test"]
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images become a CLIP's input (the fields of open_clip's ``PreprocessCfg``; defaults: OpenAI's CLIP).

    ``model.clip.clip_preprocessing(name, pretrained)`` gives a model's own; the `dapt` CLI sets it.
    """

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"--data.resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"--data.interpolation must be bicubic, bilinear or nearest, got {self.interpolation!r}")


def build_transform(
    name: TransformName,
    preprocessing: ImagePreprocessing | int = ImagePreprocessing(),
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> T.Compose:
    """``train``: RandomResizedCrop(``crop_scale``) + flip on the model's interpolation and normalisation; ``test``:
    open_clip's evaluation transform. An int ``preprocessing`` is a size with OpenAI's settings."""
    if isinstance(preprocessing, int):
        preprocessing = ImagePreprocessing(size=preprocessing)
    if name == "test":
        config = PreprocessCfg(
            size=preprocessing.size,
            mean=preprocessing.mean,
            std=preprocessing.std,
            interpolation=preprocessing.interpolation,
            resize_mode=preprocessing.resize_mode,
            fill_color=preprocessing.fill_color,
        )
        return image_transform_v2(config, is_train=False)
    if name != "train":
        raise ValueError(f"transform must be 'train' or 'test', got {name!r}")
    interpolation = T.InterpolationMode(preprocessing.interpolation)
    return T.Compose(
        [
            T.RandomResizedCrop(preprocessing.size, scale=tuple(crop_scale), interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(preprocessing.mean, preprocessing.std),
        ]
    )
