"""t-SNE plots of text and image embeddings, zero-shot vs tuned (the paper's Figures 1 and 6), after fitting.

Plotting imports matplotlib lazily (Agg backend for files), so importing this module pulls in no plotting code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from dapt_lightning.callbacks.features import image_features, subset
from dapt_lightning.callbacks.paths import output_folder


class EmbeddingPlots(L.Callback):
    """At the end of fitting (rank zero only), plot t-SNE of class text embeddings and of test image embeddings.

    Each figure has two panels, zero-shot CLIP (hand-crafted prompt, no visual prompts) and the tuned model,
    saved as PNG under ``<log dir>/figures/`` and logged as images when the logger can (W&B).

    Args:
        enabled: make the plots.
        split: images to embed (``test`` or ``val``).
        max_images: at most this many images (a seeded random subset), to keep t-SNE quick.
        batch_size: images per encoding batch.
    """

    def __init__(
        self, enabled: bool = True, split: str = "test", max_images: int = 1000, batch_size: int = 100
    ) -> None:
        self.enabled = enabled
        self.split = split
        self.max_images = max_images
        self.batch_size = batch_size
        self.paths: list[Path] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._plot(trainer, pl_module, output_folder(trainer) / "figures")

    @rank_zero_only
    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not self.enabled or datamodule is None or not getattr(datamodule.splits, self.split, None):
            return
        method = getattr(pl_module, "title", "") or type(pl_module).__name__
        name = f"{datamodule.dataset_name} {method}"
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            # The zero-shot classifier of `dapt test --model.method zeroshot`: the dataset's own template.
            template = datamodule.template
            text_zero, text_tuned = pl_module.model.encode_template(template), pl_module.model.encode_text().float()
        classes = torch.arange(text_zero.shape[0])
        images = subset(datamodule.dataset(self.split, transform="test"), self.max_images)
        zero, labels = image_features(pl_module, images, zero_shot=True, batch_size=self.batch_size)
        tuned, _ = image_features(pl_module, images, zero_shot=False, batch_size=self.batch_size)
        pl_module.train(was_training)
        figures = {
            "tsne_text": (
                [("zero-shot CLIP", text_zero), (f"tuned ({method})", text_tuned)],
                classes,
                f"class text embeddings: {name}",
            ),
            "tsne_image": (
                [("zero-shot CLIP", zero), (f"tuned ({method})", tuned)],
                labels,
                f"{self.split} image embeddings: {name}",
            ),
        }
        self.paths = []
        for key, (panels, colours, title) in figures.items():
            path = folder / f"{key}.png"
            plot_embedding_pair(panels, colours, title, path)
            self.paths.append(path)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key=f"embeddings/{key}", images=[str(path)], caption=[title])
        rank_zero_info(f"Embedding plots: {', '.join(str(p) for p in self.paths)}")


def tsne(features: torch.Tensor, seed: int = 0, perplexity: float = 30.0) -> Any:
    """2-D t-SNE of ``features`` ``[N, D]`` (sklearn, cosine metric); perplexity is capped for small N."""
    from sklearn.manifold import TSNE

    count = features.shape[0]
    perplexity = max(1.0, min(perplexity, (count - 1) / 3))
    model = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return model.fit_transform(features.detach().cpu().double().numpy())


def plot_embedding_pair(
    panels: list[tuple[str, torch.Tensor]], labels: torch.Tensor, title: str, path: str | Path | None = None
) -> Any:
    """t-SNE panels side by side (e.g. zero-shot vs tuned), points coloured by class; saved as PNG if ``path``.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")  # files only: no display needed (also under a headless job scheduler)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    colours = labels.cpu().numpy()
    for axis, (name, features) in zip(axes[0], panels, strict=True):
        points = tsne(features)
        axis.scatter(points[:, 0], points[:, 1], c=colours, cmap="tab20", s=12 if len(colours) > 50 else 40)
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return figure
