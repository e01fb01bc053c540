"""Notebook helpers for looking inside a trained model: reload a checkpoint with its data, embeddings, per-class
accuracy, t-SNE, the words nearest the learned context.

``notebooks/explore_checkpoint.ipynb`` uses these; the embedding and t-SNE functions are the library's own (the
embedding-plot callback draws the same figures).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dapt_lightning.callbacks.embeddings import plot_embedding_pair, tsne
from dapt_lightning.callbacks.features import image_features, subset
from dapt_lightning.checkpoint import load_checkpoint_file
from dapt_lightning.data.datamodule import FewShotDataModule
from dapt_lightning.data.registry import dataset_template
from dapt_lightning.methods import CLIPMethod

__all__ = [
    "confusion_matrix",
    "image_features",
    "load_checkpoint",
    "nearest_words",
    "notebook_folder",
    "plot_embedding_pair",
    "resolve_path",
    "show_predictions",
    "subset",
    "tsne",
    "tuned_text_features",
    "visual_prompt_norms",
    "zero_shot_text_features",
]


NOTEBOOK = "explore_checkpoint.ipynb"


def notebook_folder() -> Path:
    """The folder of the running notebook: Jupyter's (``$JPY_SESSION_NAME``), else the ``notebooks/`` folder holding
    it in the working directory or above (papermill run from the repository), else the working directory."""
    session = os.environ.get("JPY_SESSION_NAME")
    if session and Path(session).parent.is_dir():
        return Path(session).parent.resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / NOTEBOOK).is_file():
            return folder
        if (folder / "notebooks" / NOTEBOOK).is_file():
            return folder / "notebooks"
    return Path.cwd()


def resolve_path(value: str | Path, parameter: str) -> Path:
    """A notebook parameter's file: as given when absolute; a relative path is looked for in the working directory,
    then in the notebook's folder (:func:`notebook_folder`).

    Raises:
        FileNotFoundError: in neither place; the message names both.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise FileNotFoundError(f"{parameter}: {path} does not exist")
        return path
    places = list(dict.fromkeys([Path.cwd(), notebook_folder()]))
    for base in places:
        if (base / path).exists():
            return (base / path).resolve()
    raise FileNotFoundError(
        f"{parameter}: {value} is in neither {' nor '.join(str(p) for p in places)} (relative paths are looked for "
        "in the working directory, then in the notebook's folder); give an absolute path"
    )


def load_checkpoint(
    path: str | Path,
    data_overrides: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
) -> tuple[CLIPMethod, FewShotDataModule]:
    """Rebuild a trained module (CLIP from its identity + the stored prompts) and its DataModule.

    Args:
        path: a prompt-only checkpoint written by ``dapt fit``.
        data_overrides: DataModule settings to change (e.g. ``{"root": "/data", "num_workers": 0}``, or another
            ``dataset`` for cross-dataset evaluation; the prompts then transfer, the prototypes do not).
        device: where the module goes.
        weights: the CLIP weights file the checkpoint was trained on, where it is now (None: where it recorded).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (set DAPT_CKPT or the notebook's ckpt_path)")
    checkpoint = load_checkpoint_file(path)
    # LightningCLI adds private keys such as ``_instantiator``; the DataModule takes only its own arguments.
    data_args = {
        k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")
    }
    data_args.update(data_overrides or {})
    datamodule = FewShotDataModule(**data_args)
    settings = {"pretrained": str(weights)} if weights is not None else {}
    module = CLIPMethod.load_from_checkpoint(
        str(path), map_location="cpu", classnames=datamodule.classnames, **settings
    )
    datamodule.follow(module)  # as under a Trainer: the data takes the model's CLIP preprocessing
    module.eval().to(device)
    return module, datamodule


def zero_shot_text_features(
    module: CLIPMethod, dataset: str | None = None, template: str | None = None
) -> torch.Tensor:
    """L2-normalised class text features ``[C, D]`` of a hand-crafted prompt: zero-shot CLIP's classifier.

    Args:
        module: the model whose frozen CLIP encodes the prompts.
        dataset: take this dataset's template, as ``dapt test --model.method zeroshot`` does.
        template: the prompt (``{}``: class name); wins over ``dataset``. Neither: the module's template.
    """
    return module.model.encode_template(template or (dataset_template(dataset) if dataset else None))


@torch.no_grad()
def tuned_text_features(module: CLIPMethod) -> torch.Tensor:
    """L2-normalised class text features ``[C, D]`` with the learned prompts (as used for classification)."""
    return module.model.encode_text().float()


def confusion_matrix(
    image_feats: torch.Tensor, labels: torch.Tensor, text_feats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The confusion matrix ``[C, C]`` (rows: true class) and per-class accuracy ``[C]`` of cosine classification."""
    num_classes = text_feats.shape[0]
    predictions = (image_feats.to(text_feats) @ text_feats.t()).argmax(-1).cpu()
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(num_classes, -1)
    per_class = confusion.diagonal() / confusion.sum(1).clamp(min=1)
    return confusion, per_class.float()


def nearest_words(module: CLIPMethod, k: int = 5, metric: str = "cosine") -> list[list[tuple[str, float]]]:
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
        raise ValueError(f"{type(module).__name__} has no learned text context")
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
    tower = module.model.text_tower
    return [
        [(tower.decode([int(i)]).strip(), float(v)) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values, indices, strict=True)
    ]


def visual_prompt_norms(module: CLIPMethod) -> torch.Tensor:
    """L2 norm of each learned visual prompt token ``[num_tokens]`` (empty without visual prompts; the input's
    tokens of deep prompts)."""
    prompt = module.model.visual_prompt
    if prompt is None:
        return torch.zeros(0)
    with torch.no_grad():
        tokens = prompt.vis_ctx if hasattr(prompt, "vis_ctx") else prompt()[0]
    return tokens.detach().float().norm(dim=-1).cpu()


def show_predictions(images: Sequence[str | Path], top: Sequence[Sequence[tuple[str, float]]], columns: int = 3) -> Any:
    """A figure of ``images``, each titled with its top classes and probabilities (``Predictions.top(3)``)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = (len(images) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, classes in zip(axes.flat, images, top, strict=False):
        with Image.open(image) as opened:
            ax.imshow(opened.convert("RGB"))
        ax.set_title("\n".join(f"{name} {100 * p:.1f}%" for name, p in classes), fontsize=9)
    fig.tight_layout()
    return fig
