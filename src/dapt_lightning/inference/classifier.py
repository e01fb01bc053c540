"""A tuned model in two lines: ``clf = dapt_lightning.load("last.ckpt")``, then ``clf.predict(images)``.

The :class:`Classifier` wraps a trained method in evaluation mode with its CLIP's own preprocessing. Class names
can change after training (a learned context works with any class name): their text features are computed once
per list and kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dapt_lightning.data.classnames import read_classnames
from dapt_lightning.data.image_files import image_problem
from dapt_lightning.data.transforms import ImagePreprocessing, build_transform
from dapt_lightning.methods.base import CLIPMethod
from dapt_lightning.model.prompted_clip import PromptedCLIP

ImageInput = str | Path | Image.Image
"""An image for :meth:`Classifier.predict`: a file path or a PIL image."""


@dataclass(frozen=True)
class Predictions:
    """What :meth:`Classifier.predict` found for N images over C classes.

    Attributes:
        classnames: the C classes, by index.
        probabilities: ``[N, C]`` class probabilities (softmax of the logits), on the CPU.
    """

    classnames: list[str]
    probabilities: torch.Tensor

    def __len__(self) -> int:
        return self.probabilities.shape[0]

    @property
    def indices(self) -> torch.Tensor:
        """``[N]`` index of each image's most probable class."""
        return self.probabilities.argmax(-1)

    @property
    def labels(self) -> list[str]:
        """Each image's most probable class name."""
        return [self.classnames[i] for i in self.indices.tolist()]

    @property
    def confidences(self) -> torch.Tensor:
        """``[N]`` probability of each image's most probable class."""
        return self.probabilities.max(-1).values

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable classes of each image with their probabilities, most probable first."""
        values, indices = self.probabilities.topk(min(k, len(self.classnames)), dim=-1)
        return [
            [(self.classnames[i], p) for i, p in zip(row_indices, row_values, strict=True)]
            for row_indices, row_values in zip(indices.tolist(), values.tolist(), strict=True)
        ]


class ImageToLogits(nn.Module):
    """Preprocessed images ``[B, 3, H, W]`` -> class logits ``[B, C]``, with the class text features fixed: the
    graph that ``dapt export`` writes and ``dapt serve`` runs."""

    def __init__(self, model: PromptedCLIP, text_features: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.detach().float().clone())
        self.register_buffer("logit_scale", model.logit_scale.detach().float().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.model.encode_image(images) @ self.text_features.t()


class Classifier:
    """A trained method, ready to classify images.

    Args:
        method: a trained (or zero-shot) method; it is put in evaluation mode.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``; ``auto``: a GPU when there is one).
        batch_size: images per forward pass.
        classnames: the default class list (None: the classes the method was trained on).
    """

    def __init__(
        self,
        method: CLIPMethod,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        classnames: Sequence[str] | str | None = None,
    ) -> None:
        if method.model is None:
            raise ValueError("the method has no model yet: build it with classnames=[...] or load a checkpoint")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.method = method.eval()
        self.batch_size = batch_size
        self.device = _device(device)
        self.method.to(self.device)
        self.classnames = read_classnames(classnames, "classnames") if classnames is not None else method.classnames
        self.preprocessing = ImagePreprocessing(**(method.image_preprocessing or {"size": method.image_size}))
        self.transform = build_transform("test", self.preprocessing)
        self._targets: dict[tuple[str, ...], tuple[PromptedCLIP, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Classifier({type(self.method).__name__}, {len(self.classnames)} classes, device={self.device})"

    @torch.no_grad()
    def encode_texts(self, classnames: Sequence[str] | str | None = None) -> torch.Tensor:
        """L2-normalised text features ``[C, D]`` of the classes with the learned prompts (on the model's device)."""
        return self._target(classnames)[1]

    def _target(self, classnames: Sequence[str] | str | None) -> tuple[PromptedCLIP, torch.Tensor]:
        """The model for these classes (the method's own, or one for other class names) and its text features."""
        names = tuple(self.classnames_for(classnames))
        if names not in self._targets:
            own = list(names) == self.method.classnames
            model = self.method.model if own else self.method.retargeted(list(names))
            self._targets[names] = (model, model.encode_text().float())
        return self._targets[names]

    @torch.no_grad()
    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised image features ``[N, D]`` with the learned visual prompts (on the CPU)."""
        return torch.cat([self._image_features(pixels).cpu() for pixels in self._batches(images, batch_size)])

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, classnames: Sequence[str] | str | None = None) -> torch.Tensor:
        """Class logits ``[B, C]`` of preprocessed images ``[B, 3, H, W]`` (:attr:`transform`'s output)."""
        model, text = self._target(classnames)
        return self.method.forward_features(pixels.to(self.device), text, model)[0]

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classnames: Sequence[str] | str | None = None,
        batch_size: int | None = None,
    ) -> Predictions:
        """Classify images (paths or PIL images; one or many), in batches on the classifier's device.

        Args:
            images: the images.
            classnames: the classes to choose from (a list, ``"cat,dog"`` or a file, one per line); None: the
                classifier's.
            batch_size: images per forward pass; None: the classifier's.
        """
        names = self.classnames_for(classnames)
        probabilities = [
            self.logits(pixels, names).float().softmax(-1).cpu() for pixels in self._batches(images, batch_size)
        ]
        return Predictions(list(names), torch.cat(probabilities))

    def graph(self, classnames: Sequence[str] | str | None = None) -> ImageToLogits:
        """The images -> logits module for these classes (text features computed once, stored in it).

        Raises:
            ValueError: the method's class texts depend on each image (CoCoOp): no fixed text features exist.
        """
        if self.method.conditions_text_on_image:
            raise ValueError(
                f"{type(self.method).__name__} encodes the class texts anew for every image, so no graph with fixed "
                "text features gives its logits; use it from Python or `dapt serve`, which run its text tower"
            )
        model, text = self._target(classnames)
        return ImageToLogits(model, text).eval()

    def classnames_for(self, classnames: Sequence[str] | str | None) -> list[str]:
        """``classnames`` read as :func:`read_classnames` reads them; None: the classifier's."""
        return self.classnames if classnames is None else read_classnames(classnames, "classnames")

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.method.model.encode_image(pixels).float(), dim=-1)

    def _batches(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None) -> Iterator[torch.Tensor]:
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not items:
            raise ValueError("no images given")
        size = batch_size or self.batch_size
        for start in range(0, len(items), size):
            pixels = torch.stack([self.transform(_rgb(item)) for item in items[start : start + size]])
            yield pixels.to(self.device)


def load(
    checkpoint: str | Path,
    device: str | torch.device = "auto",
    classnames: Sequence[str] | str | None = None,
    pretrained: str | None = None,
    batch_size: int = 32,
    **settings: Any,
) -> Classifier:
    """A :class:`Classifier` from a checkpoint written by ``dapt fit`` (read with ``torch.load(weights_only=True)``).

    Args:
        checkpoint: the ``.ckpt`` file (``runs/.../checkpoints/last.ckpt``).
        device: ``cpu``, ``cuda``, ``cuda:1``; ``auto``: a GPU when there is one.
        classnames: the default classes (None: those it was trained on).
        pretrained: where the CLIP weights file it was trained on is now (when it moved).
        batch_size: images per forward pass.
        **settings: method settings to override (``text_encoding="full"``, ...).
    """
    if pretrained is not None:
        settings["pretrained"] = pretrained
    method = CLIPMethod.load_from_checkpoint(checkpoint, map_location="cpu", **settings)
    return Classifier(method, device=device, batch_size=batch_size, classnames=classnames)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _rgb(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        raise ValueError(f"{image}: {image_problem(str(image))}") from None
