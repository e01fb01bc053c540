"""DAPT's two dispersion measures, before tuning (zero-shot CLIP) and after, on a fitted DAPT module's test set."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch

from dapt_lightning.callbacks.features import image_features
from dapt_lightning.losses import inter_dispersion, intra_dispersion


@dataclass(frozen=True)
class Dispersion:
    """DAPT's losses as measures: ``inter`` (class text embeddings, lower is more spread apart) and ``intra``
    (image embeddings to their class prototype, lower is tighter)."""

    inter: float
    intra: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def dispersion_before_after(
    module: L.LightningModule, datamodule: L.LightningDataModule, batch_size: int = 500
) -> tuple[Dispersion, Dispersion]:
    """The inter- and intra-dispersion of zero-shot CLIP and of the tuned ``module`` on the test images.

    Both use the tuned module's class prototypes (the mean zero-shot feature of each class's training images) and
    its ``rbf_t``; zero-shot CLIP is the dataset's hand-crafted prompt without visual prompts.
    """
    if not module.has_prototypes:
        raise ValueError("dispersion_before_after needs a module fitted with DAPT's prototypes (--model DAPT)")
    images = datamodule.dataset("test", transform="test")
    zero_images, labels = image_features(module, images, zero_shot=True, batch_size=batch_size)
    tuned_images, _ = image_features(module, images, zero_shot=False, batch_size=batch_size)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        zero_text = module.model.encode_template(datamodule.template).cpu()
        tuned_text = module.model.encode_text().float().cpu()
    module.train(was_training)
    prototypes = module.prototypes.float().cpu()
    t = module.hparams.rbf_t

    def measure(text: torch.Tensor, features: torch.Tensor) -> Dispersion:
        return Dispersion(float(inter_dispersion(text, t)), float(intra_dispersion(features, prototypes, labels)))

    return measure(zero_text, zero_images), measure(tuned_text, tuned_images)
