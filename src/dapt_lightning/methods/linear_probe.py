"""The linear probe: L2-regularised logistic regression on frozen CLIP image features, its strength searched on the
validation split (the CLIP paper's protocol, as KaiyangZhou/CoOp ``lpclip/`` runs it for the few-shot tables)."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from dapt_lightning.callbacks.feature_cache import frozen_features
from dapt_lightning.methods.base import Batch
from dapt_lightning.methods.tuning import TrainedMethod
from dapt_lightning.model.prompted_clip import PromptedCLIP

OFFICIAL_C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


class LinearProbe(TrainedMethod):
    """Logistic regression (scikit-learn, L-BFGS, L2) on the raw image features of the frozen CLIP (``clip.visual``'s
    output, not normalised; the test transform), fitted in closed form when fitting starts, from cached features.

    The inverse regularisation ``C`` is chosen as the official ``lpclip/linear_probe.py`` does: the value of
    ``c_grid`` with the best validation accuracy, then ``search_steps`` halvings of the interval ``[C/10, 10 C]`` in
    log space towards the better end; the classifier of the last step is kept. The validation split is the
    DataModule's (Dassl's ``min(shots, 4)`` per class, as the official ``val_shot_list``); upstream draws its own
    few-shot samples, here every method uses the same splits.

    Args:
        c_grid: the first search's values of ``C``.
        search_steps: halvings of the search interval after the grid (8 officially).
        max_iter: L-BFGS iterations per fit.
    """

    name = "linear_probe"
    title = "linear probe"
    names_new_classes: ClassVar[bool] = False

    def __init__(
        self,
        c_grid: list[float] = list(OFFICIAL_C_GRID),  # noqa: B006  (jsonargparse shows the default; never mutated)
        search_steps: int = 8,
        max_iter: int = 1000,
        **kwargs: Any,
    ) -> None:
        if not c_grid or min(c_grid) <= 0:
            raise ValueError(f"--model.c_grid must be values > 0, got {c_grid}")
        if search_steps < 0 or max_iter < 1:
            raise ValueError(f"--model.search_steps must be >= 0 and --model.max_iter >= 1: {search_steps}, {max_iter}")
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def build_state(self, num_classes: int, dim: int) -> None:
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("inverse_regularisation", torch.tensor(math.nan))  # C; NaN until fitted

    @property
    def fitted(self) -> bool:
        return not math.isnan(float(self.inverse_regularisation))

    def forward_features(
        self, images: torch.Tensor, text_features: torch.Tensor | None = None, model: PromptedCLIP | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, normalised image features, class text features)``; the logits are the classifier's decision
        function (their softmax is scikit-learn's ``predict_proba``)."""
        model = model or self.model
        features = model.image_tower(images, None)
        logits = self.head(features.to(self.head.weight.dtype))
        text = text_features if text_features is not None else self.head.weight
        return logits, F.normalize(features, dim=-1), text

    # ------------------------------------------------------------------------------------------------------------
    # Fitting: closed form on cached features, when training starts; the training loop then stops at once.

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Stepped once, with no gradients (so nothing changes): the closed-form fit counts as the run's one
        # optimisation step, and checkpoints and resumption treat the run like any other.
        return torch.optim.SGD(self.head.parameters(), lr=0.0)

    def on_train_start(self) -> None:
        if self.fitted:
            rank_zero_info(f"Linear probe: kept from the checkpoint (C = {float(self.inverse_regularisation):g})")
            return
        datamodule = self.trainer.datamodule
        train = [t.cpu().numpy() for t in frozen_features(self, datamodule, "train")]
        val = [t.cpu().numpy() for t in frozen_features(self, datamodule, "val")]
        search = ProbeSearch(*train, *val, max_iter=self.hparams.max_iter)
        c, classifier = search.run(self.hparams.c_grid, self.hparams.search_steps)
        self.set_classifier(classifier.coef_, classifier.intercept_, len(self.classnames))
        self.inverse_regularisation.fill_(c)
        stopped = f"; {search.unconverged} of {search.fits} fits stopped at max_iter" if search.unconverged else ""
        rank_zero_info(
            f"Linear probe: C = {c:g} (validation accuracy {search.last_accuracy:.4f}, {search.fits} fits){stopped}"
        )

    def set_classifier(self, coef: np.ndarray, intercept: np.ndarray, num_classes: int) -> None:
        """Install scikit-learn's ``coef_`` and ``intercept_``; a two-class fit's single row becomes logits
        ``[0, z]`` (the same prediction and probabilities)."""
        weight, bias = torch.as_tensor(coef, dtype=torch.float32), torch.as_tensor(intercept, dtype=torch.float32)
        if num_classes == 2 and weight.shape[0] == 1:
            weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> int | None:
        return -1 if batch_idx > 0 else None  # the probe is fitted already: one step, then the epoch ends

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        self.optimizers().step()

    def on_train_epoch_end(self) -> None:
        self.trainer.should_stop = True  # one epoch: its checkpoint (and validation, if due) holds the fitted probe


class ProbeSearch:
    """The official search of ``C`` over scikit-learn fits of the training features, scored on the validation ones.

    Args:
        train_features, train_labels: the fit's data.
        val_features, val_labels: the search's.
        max_iter: L-BFGS iterations per fit.
    """

    def __init__(
        self,
        train_features: np.ndarray,
        train_labels: np.ndarray,
        val_features: np.ndarray,
        val_labels: np.ndarray,
        max_iter: int = 1000,
    ) -> None:
        self.train = (train_features, train_labels)
        self.val = (val_features, val_labels)
        self.max_iter = max_iter
        self.fits = 0
        self.unconverged = 0
        self.last_accuracy = math.nan

    def fit(self, c: float) -> tuple[Any, float]:
        """The classifier of ``C = c`` and its validation accuracy."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            # L2 (the official penalty="l2") is the default; passing it is deprecated since scikit-learn 1.8.
            classifier = LogisticRegression(solver="lbfgs", max_iter=self.max_iter, C=c).fit(*self.train)
        self.fits += 1
        self.unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        accuracy = float(np.mean(classifier.predict(self.val[0]) == self.val[1]))
        return classifier, accuracy

    def run(self, c_grid: list[float], steps: int) -> tuple[float, Any]:
        """``(C, classifier)``: the grid's best value (the first of equals), refined by ``steps`` log-space halvings
        of ``[C/10, 10 C]`` in log space towards the end of higher accuracy (the left on a tie); the last step's."""
        scored = [self.fit(c) for c in c_grid]
        best = int(np.argmax([accuracy for _, accuracy in scored]))
        c_final, (classifier, self.last_accuracy) = c_grid[best], scored[best]
        left, right = 1e-1 * c_grid[best], 1e1 * c_grid[best]
        for _ in range(steps):
            fitted_left, fitted_right = self.fit(left), self.fit(right)
            middle = 0.5 * (np.log10(right) + np.log10(left))
            if fitted_left[1] < fitted_right[1]:
                c_final, (classifier, self.last_accuracy) = right, fitted_right
                log_left, log_right = middle, np.log10(right)
            else:
                c_final, (classifier, self.last_accuracy) = left, fitted_left
                log_left, log_right = np.log10(left), middle
            left, right = float(np.power(10, log_left)), float(np.power(10, log_right))
        return float(c_final), classifier
