"""Looking inside a trained model: load a checkpoint, embeddings, per-class accuracy, t-SNE, nearest words.

The embedding-plot callback and ``notebooks/explore_checkpoint.ipynb`` share these functions. Plotting
imports matplotlib lazily (Agg backend), so importing this module pulls in no plotting code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from dapt_lightning.data.datamodule import DAPTDataModule
from dapt_lightning.features import encode_images
from dapt_lightning.module import DAPTModule
from dapt_lightning.templates import dataset_template


def load_checkpoint(
    path: str | Path, data_overrides: dict[str, Any] | None = None, device: str | torch.device = "cpu"
) -> tuple[DAPTModule, DAPTDataModule]:
    """Rebuild a trained module (CLIP from its identity + the stored prompts) and its DataModule.

    Args:
        path: a prompt-only checkpoint written by ``dapt fit``.
        data_overrides: DataModule settings to change (e.g. ``{"root": "/data", "num_workers": 0}``, or another
            ``dataset`` for cross-dataset evaluation; the prompts then transfer, the prototypes do not).
        device: where the module goes.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (set DAPT_CKPT or the notebook's ckpt_path)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # LightningCLI adds private keys such as ``_instantiator``; the DataModule takes only its own arguments.
    data_args = {
        k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")
    }
    data_args.update(data_overrides or {})
    datamodule = DAPTDataModule(**data_args)
    module = DAPTModule.load_from_checkpoint(str(path), map_location="cpu", classnames=datamodule.classnames)
    module.eval().to(device)
    datamodule.image_size = datamodule.image_size or module.image_size
    return module, datamodule


@torch.no_grad()
def zero_shot_text_features(module: DAPTModule, template: str | None = None) -> torch.Tensor:
    """L2-normalised text features ``[C, D]`` of hand-crafted prompts (no learned context): zero-shot CLIP.

    Args:
        module: the model whose frozen CLIP encodes the prompts.
        template: the prompt (``{}``: class name); None: the dataset's CoOp template, else the module's.
    """
    model = module.model
    template = template or getattr(model, "template", None) or dataset_template("")
    tower = model.text_tower
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=tower.context_length)
    tokens = tokenizer([template.format(name.replace("_", " ")) for name in model.classnames]).to(module.device)
    eot = tokens.argmax(-1)
    length = int(eot.max()) + 1  # exact: the causal mask makes positions after EOT irrelevant
    features = tower(tower.embed_tokens(tokens[:, :length]), eot)
    return F.normalize(features.float(), dim=-1)


@torch.no_grad()
def tuned_text_features(module: DAPTModule) -> torch.Tensor:
    """L2-normalised class text features ``[C, D]`` with the learned prompts (as used for classification)."""
    return module.model.encode_text().float()


def subset(dataset: Dataset, max_items: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most ``max_items`` items (all of them when None), in index order."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    indices = sorted(random.Random(seed).sample(range(len(dataset)), max_items))
    return Subset(dataset, indices)


@torch.no_grad()
def image_features(
    module: DAPTModule, dataset: Dataset, zero_shot: bool = False, batch_size: int = 100, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image features ``[N, D]`` and labels ``[N]``; ``zero_shot`` skips the visual prompts."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = module.training
    module.eval()
    features, labels = encode_images(module.model, loader, module.device, use_prompts=not zero_shot)
    module.train(was_training)
    return features.cpu(), labels.cpu()


def confusion_matrix(
    image_feats: torch.Tensor, labels: torch.Tensor, text_feats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The confusion matrix ``[C, C]`` (rows: true class) and per-class accuracy ``[C]`` of cosine classification."""
    num_classes = text_feats.shape[0]
    predictions = (image_feats.to(text_feats) @ text_feats.t()).argmax(-1).cpu()
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, -1)
    per_class = confusion.diagonal() / confusion.sum(1).clamp(min=1)
    return confusion, per_class.float()


def nearest_words(module: DAPTModule, k: int = 5, metric: str = "cosine") -> list[list[tuple[str, float]]]:
    """For each learned text context vector, the ``k`` nearest vocabulary tokens (CoOp's interpretation).

    Args:
        module: a model with text prompts.
        k: words per context vector.
        metric: ``cosine`` (similarity, higher is nearer) or ``l2`` (distance, lower is nearer).

    Returns:
        One list per context position of ``(word, score)`` pairs, nearest first.
    """
    prompt = module.model.text_prompt
    if prompt is None:
        raise ValueError(f"method {module.hparams.method!r} has no learned text context")
    context = prompt.txt_ctx.detach().float()
    context = context.reshape(-1, context.shape[-1])  # class-specific contexts: every class's rows in turn
    vocabulary = module.model.text_tower.token_embedding.weight.detach().float().to(context.device)
    if metric == "cosine":
        scores = F.normalize(context, dim=-1) @ F.normalize(vocabulary, dim=-1).t()
        values, indices = scores.topk(k, dim=-1)
    elif metric == "l2":
        scores = torch.cdist(context, vocabulary)
        values, indices = scores.topk(k, dim=-1, largest=False)
    else:
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return [
        [(tokenizer.decode([int(i)]).strip(), float(v)) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values, indices, strict=True)
    ]


def visual_prompt_norms(module: DAPTModule) -> torch.Tensor:
    """L2 norm of each learned visual prompt token ``[num_tokens]`` (empty without visual prompts)."""
    prompt = module.model.visual_prompt
    if prompt is None:
        return torch.zeros(0)
    return prompt.vis_ctx.detach().float().norm(dim=-1).cpu()


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
