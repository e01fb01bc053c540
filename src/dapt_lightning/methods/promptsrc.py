"""PromptSRC: IVLP's deep prompts regularised towards the frozen CLIP (Khattak et al., ICCV 2023), and
Gaussian-weighted prompt aggregation over epochs (``callbacks/gpa.py``)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from dapt_lightning.callbacks.gpa import GaussianPromptAggregation
from dapt_lightning.methods.deep_prompting import IVLP
from dapt_lightning.storage import default_cache_dir, load_tensors, save_tensors, stable_hash


def teacher_templates() -> list[str]:
    """Upstream's 60 text templates (``trainers/imagenet_templates.IMAGENET_TEMPLATES``): the first 60 of OpenAI's 80
    ImageNet templates, "a photo of a {}." first."""
    templates = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES[:60]]
    generic = "a photo of a {}."
    return [generic] + [template for template in templates if template != generic]


class PromptSRC(IVLP):
    """PromptSRC: ``L = CE + KL + text_loss_weight * L1_text + image_loss_weight * L1_image``, where, with the frozen
    CLIP as teacher,

    * ``L1_text``: mean absolute difference of the normalised class text features and the teacher's, the mean of its
      unnormalised features over 60 templates, normalised afterwards (computed once per run and cached on disk:
      :meth:`teacher_text_features`);
    * ``L1_image``: the same for the normalised image features and the frozen CLIP's (no prompts);
    * ``KL``: ``KL(teacher || student)`` of the logits' softmax, summed and divided by batch x classes.

    GPA (:class:`GaussianPromptAggregation`, added unless the Trainer has one) keeps the Gaussian-weighted average
    of the prompts over the epochs. Defaults: the official base-to-new config
    (``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``: IVLP 4+4 tokens at depth 9, SGD 2.5e-3,
    batch 4, 20 epochs, weights 25 and 10, GPA mean 15, std 1); ``configs/methods/promptsrc*.yaml`` hold the others.

    Args:
        text_loss_weight: weight of ``L1_text`` (``TEXT_LOSS_WEIGHT``).
        image_loss_weight: weight of ``L1_image`` (``IMAGE_LOSS_WEIGHT``).
        gpa_mean: the epoch of GPA's largest weight (``GPA_MEAN``).
        gpa_std: GPA's spread in epochs (``GPA_STD``).
    """

    name = "promptsrc"
    title = "PromptSRC"

    def __init__(
        self,
        text_loss_weight: float = 25.0,
        image_loss_weight: float = 10.0,
        gpa_mean: float = 15.0,
        gpa_std: float = 1.0,
        **kwargs: Any,
    ) -> None:
        for name, value in (("text_loss_weight", text_loss_weight), ("image_loss_weight", image_loss_weight)):
            if value < 0:
                raise ValueError(f"--model.{name} must be >= 0, got {value}")
        if not gpa_std > 0:
            raise ValueError(f"--model.gpa_std must be > 0, got {gpa_std}")
        super().__init__(**kwargs)

    def build_state(self, num_classes: int, dim: int) -> None:
        # The frozen CLIP's class text features, needed only to train: computed when fitting starts (on the run's
        # device), or at the first training batch outside a Trainer; never stored in a checkpoint.
        self.register_buffer("teacher_text", None, persistent=False)

    def on_fit_start(self) -> None:
        self.teacher_text_features(use_cache=True)

    @torch.no_grad()
    def teacher_text_features(self, use_cache: bool = False) -> torch.Tensor:
        """The teacher's unnormalised class text features ``[C, D]``: the frozen CLIP's, averaged over upstream's 60
        templates, in fp32. Computed once per run; with ``use_cache``, read from (or written to) the cache folder
        (``$DAPT_CACHE_DIR/promptsrc``) under a key of the CLIP, the class names and how they are computed."""
        if self.teacher_text is not None:
            return self.teacher_text
        path, key = None, ""
        if use_cache and self.clip_identity is not None:
            key = stable_hash(
                {
                    "clip": self.clip_identity.to_dict(),
                    "classnames": self.model.classnames,
                    "templates": teacher_templates(),
                    "text_path": "lean" if self.model.text_tower.lean_blocks else "open_clip",
                    "device": self.device.type,  # the last bits of the features
                }
            )
            path = default_cache_dir() / "promptsrc" / f"teacher-{key[:24]}.safetensors"
            cached, _ = load_tensors(path, key)
            if cached is not None:
                self.teacher_text = cached["teacher_text"].to(self.device)
                rank_zero_info(f"PromptSRC: the teacher's class text features, from the cache {path}")
                return self.teacher_text
        with torch.autocast(self.device.type, enabled=False):  # fp32, whatever the training precision
            templates = teacher_templates()
            features = torch.stack([self.model.template_features(t) for t in templates]).mean(dim=0)
        self.teacher_text = features
        if path is not None:
            save_tensors(path, {"teacher_text": features}, key)
            rank_zero_info(
                f"PromptSRC: the teacher's class text features over {len(templates)} templates, cached {path}"
            )
        return features

    def configure_callbacks(self) -> list[L.Callback]:
        """GPA with this method's ``gpa_mean``/``gpa_std``, unless the Trainer has a GPA callback of its own."""
        present = self._trainer is not None and any(
            isinstance(c, GaussianPromptAggregation) for c in self.trainer.callbacks
        )
        return [] if present else [GaussianPromptAggregation(self.hparams.gpa_mean, self.hparams.gpa_std)]

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, image_features, text_features = self.forward_features(images)
        with torch.no_grad():
            teacher_image = self.model.encode_image(images, use_prompts=False)
            teacher_text = F.normalize(self.teacher_text_features(), dim=-1)
            teacher_logits = self.model.logit_scale * teacher_image @ teacher_text.to(teacher_image).t()
        ce = F.cross_entropy(logits, labels)
        text_l1 = F.l1_loss(text_features, teacher_text.to(text_features))
        image_l1 = F.l1_loss(image_features, teacher_image.to(image_features))
        kl = (
            F.kl_div(
                F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1), reduction="sum", log_target=True
            )
            / logits.numel()
        )
        settings = self.hparams
        total = ce + kl + settings.text_loss_weight * text_l1 + settings.image_loss_weight * image_l1
        return logits, {"total": total, "ce": ce, "kl": kl, "text_l1": text_l1, "image_l1": image_l1}
