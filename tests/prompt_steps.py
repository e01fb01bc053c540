"""Shared by the fast-path and compile tests: class names of very different lengths, perturbed tiny CLIPs, and
the outputs of one DAPT training step (features, logits, loss terms, prompt gradients) to compare paths by."""

from __future__ import annotations

import copy

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from dapt_lightning.losses import dapt_loss
from dapt_lightning.methods import VPT, CoOp, CoOpVPT, ZeroShotCLIP
from dapt_lightning.methods.registry import init_arguments
from dapt_lightning.model.clip import load_clip
from dapt_lightning.model.prompted_clip import PromptedCLIP
from dapt_lightning.model.text_encoding import TextEncoder, build_text_encoder

# Suffix lengths of 2 to 22 tokens, several sharing a length (buckets of more than one class); the last
# name is more than 10 tokens longer than any other.
CLASSNAMES = [
    "cat",
    "dog",
    "red fox",
    "great_white_shark",
    "golden retriever",
    "Chesapeake Bay Retriever",
    "St. Bernard",
    "a",
    "yellow lady's slipper",
    "bell or wind chime",
    "an extraordinarily long made up class name that keeps going on and on for many more tokens than the rest",
]
REL_TOL = 1e-5


def perturb(clip: nn.Module, seed: int) -> nn.Module:
    """Move every LayerNorm and bias away from its default init (ones and zeros hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in clip.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith(("ln_", "visual.ln_")):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.2 * noise)
    return clip


def perturbed_tiny_clip(activation: str = "quickgelu") -> nn.Module:
    """The random-weight tiny CLIP with QuickGELU (as its config asks) or plain GELU, perturbed."""
    torch.manual_seed(0)
    if activation == "quickgelu":
        clip, _ = load_clip("dapt-tiny", None)
    else:  # the tiny config asks for QuickGELU; the keyword override builds plain GELU
        clip = open_clip.create_model("dapt-tiny", pretrained=None, quick_gelu=False).float().eval()
        clip.requires_grad_(False)
    expected = open_clip.transformer.QuickGELU if activation == "quickgelu" else nn.GELU
    assert isinstance(clip.transformer.resblocks[0].mlp.gelu, expected)
    return perturb(clip, seed=1)


def build_prompted(
    clip: nn.Module,
    classnames: list[str] = CLASSNAMES,
    *,
    text_prompts: bool = True,
    visual_prompts: bool = True,
    tokenizer: object = None,
    method: type | None = None,
    **settings: object,
) -> PromptedCLIP:
    """The PromptedCLIP over ``clip`` that ``method`` builds, or the method with these prompts (CoOp+VPT by
    default), with those of ``settings`` the method takes."""
    method = (
        method
        or {(True, True): CoOpVPT, (True, False): CoOp, (False, True): VPT, (False, False): ZeroShotCLIP}[
            (text_prompts, visual_prompts)
        ]
    )
    taken = {key: value for key, value in settings.items() if key in init_arguments(method)}
    return method(**taken).build_model(clip, list(classnames), tokenizer)


def prompted_model(clip: nn.Module, **kwargs) -> PromptedCLIP:
    """A PromptedCLIP over a copy of ``clip`` whose prompts are seeded and large enough to matter."""
    torch.manual_seed(2)
    model = build_prompted(copy.deepcopy(clip), **kwargs)
    with torch.no_grad():  # larger than the N(0, 0.02^2) init, so the context really moves the features
        if model.text_prompt is not None:
            model.text_prompt.txt_ctx.normal_(std=0.5)
        if model.visual_prompt is not None:
            model.visual_prompt.vis_ctx.normal_(std=0.5)
    return model


def text_encoder(model: PromptedCLIP, mode: str, layout: str | int = "auto") -> TextEncoder:
    """A ``mode`` text-encoding strategy over ``model``'s own tower and prompts (eager)."""
    prompts = model.text_prompt if model.text_prompt is not None else model.fixed_prompts
    return build_text_encoder(mode, model.text_tower, prompts, layout=layout)


def step_outputs(model: PromptedCLIP, mode: str | None = None, layout: str | int = "auto") -> dict[str, torch.Tensor]:
    """Features, logits, every loss term and the prompt gradients of one training step.

    Args:
        model: the prompted model.
        mode: text encoding to use (see ``text_encoder``); None: the model's own strategy (compiled, if it is).
        layout: the shared-prefix layout of ``mode``.
    """
    generator = torch.Generator().manual_seed(3)
    size = model.image_tower.image_size
    images = torch.randn(4, 3, size, size, generator=generator)
    labels = torch.tensor([0, 3, 5, len(CLASSNAMES) - 1])
    dim = model.clip.text_projection.shape[1]
    prototypes = torch.randn(len(CLASSNAMES), dim, generator=generator) * 0.1
    model.zero_grad(set_to_none=True)
    image_features = model.encode_image(images)
    encoder = model.text_encoder if mode is None else text_encoder(model, mode, layout)
    text_features = F.normalize(encoder(), dim=-1)
    logits = model.logit_scale * image_features @ text_features.t()
    terms = dapt_loss(logits, labels, image_features, text_features, prototypes, beta_v=10.0, beta_t=0.1)
    terms.total.backward()
    out = {
        "text_features": text_features.detach(),
        "image_features": image_features.detach(),
        "logits": logits.detach(),
        "ce": terms.ce.detach(),
        "inter": terms.inter.detach(),
        "intra": terms.intra.detach(),
        "total": terms.total.detach(),
    }
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            out[f"grad:{name}"] = parameter.grad.detach().clone()
    return out


def assert_all_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, reference in expected.items():
        error = (actual[key] - reference).norm() / reference.norm().clamp_min(1e-30)
        assert error <= REL_TOL, f"{key}: relative error {error:.2e}"
