"""PromptedCLIP + dapt_loss against an independent re-statement of the official DAPT computation.

The reference below is written from SPEC.md with open_clip's primitives only (tokenizer, embeddings, the
transformers, layer norms, projections), the way the official CoOp/VPT code computes a training step: full
77-token prompts through the causal text transformer, visual prompts inserted after ``ln_pre``. It shares no
code with ``dapt_lightning.model`` or ``dapt_lightning.losses``.

The tiny CLIP has its layer-norm weights and biases and every linear/attention bias moved away from their
default init (ones/zeros hide mistakes such as a skipped ``ln_pre`` or a missing bias), and runs in fp32.
"""

from __future__ import annotations

import itertools
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from prompt_steps import build_prompted
from torch import nn

from dapt_lightning.losses import dapt_loss
from dapt_lightning.model.clip import load_clip

CLASSNAMES = ["cat", "american_bulldog", "sea or lake", "a rather long class name with many words", "x"]
N_CTX = 16
BETA_V, BETA_T, T = 10.0, 1.0, 2.0


def _perturbed_tiny_clip(quick_gelu: bool) -> nn.Module:
    torch.manual_seed(1234)
    clip, _ = load_clip("dapt-tiny", None, quick_gelu=quick_gelu)
    activation = type(clip.transformer.resblocks[0].mlp.gelu)
    assert activation is (QuickGELU if quick_gelu else nn.GELU)
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for module in clip.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, nn.MultiheadAttention):
                module.in_proj_bias.copy_(0.1 * torch.randn(module.in_proj_bias.shape, generator=generator))
        clip.logit_scale.fill_(math.log(30.0))
    return clip


# --- the reference -------------------------------------------------------------------------------------------


def reference_text_features(clip: nn.Module, ctx: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    prompts = [" ".join(["X"] * N_CTX) + " " + name.replace("_", " ") + "." for name in classnames]
    tokens = open_clip.tokenize(prompts)  # [C, 77]: SOT ... EOT, zero padding
    x = clip.token_embedding(tokens)
    x = torch.cat([x[:, :1], ctx.unsqueeze(0).expand(len(classnames), -1, -1), x[:, 1 + N_CTX :]], dim=1)
    x = x + clip.positional_embedding
    x = clip.transformer(x, attn_mask=clip.attn_mask)  # batch-first in open_clip 3.x
    x = clip.ln_final(x)
    x = x[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ clip.text_projection
    return x / x.norm(dim=-1, keepdim=True)


def reference_image_features(clip: nn.Module, images: torch.Tensor, vis_ctx: torch.Tensor | None) -> torch.Tensor:
    visual = clip.visual
    x = visual.conv1(images)  # [B, width, grid, grid]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    if vis_ctx is not None:
        x = torch.cat([x[:, :1], vis_ctx.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    x = visual.transformer(x)
    x = visual.ln_post(x[:, 0]) @ visual.proj
    return x / x.norm(dim=-1, keepdim=True)


def reference_losses(
    clip: nn.Module,
    txt_ctx: torch.Tensor,
    vis_ctx: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
) -> dict[str, torch.Tensor]:
    text = reference_text_features(clip, txt_ctx, CLASSNAMES)
    image = reference_image_features(clip, images, vis_ctx)
    logits = clip.logit_scale.exp() * image @ text.t()
    ce = F.cross_entropy(logits, labels)
    intra = F.mse_loss(image, prototypes[labels])
    pairs = [(text[m] - text[n]).pow(2).sum().mul(-T).exp() for m, n in itertools.combinations(range(len(text)), 2)]
    inter = torch.stack(pairs).mean()
    return {"text": text, "image": image, "logits": logits, "ce": ce, "intra": intra, "inter": inter}


# --- the comparison ------------------------------------------------------------------------------------------


def _assert_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Element-wise closeness relative to the tensor's scale (tiny entries are compared on that scale)."""
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.tensor([0, 3, 1, 3])
    txt_ctx = 0.3 * torch.randn(N_CTX, 64, generator=generator)  # larger than the init, to matter more
    vis_ctx = 0.5 * (2 * torch.rand(N_CTX, 128, generator=generator) - 1)
    prototypes = 0.7 * F.normalize(torch.randn(len(CLASSNAMES), 64, generator=generator), dim=-1)
    return images, labels, txt_ctx, vis_ctx, prototypes


@pytest.fixture(scope="module", params=[True, False], ids=["quickgelu", "gelu"])
def perturbed_clip(request: pytest.FixtureRequest) -> nn.Module:
    return _perturbed_tiny_clip(request.param)


def test_reference_matches_open_clip_without_prompts(perturbed_clip: nn.Module) -> None:
    """The reference itself: with the 'X' embeddings as context and no visual prompts it is plain CLIP."""
    images = _inputs()[0]
    x_embedding = perturbed_clip.token_embedding.weight[open_clip.tokenize(["X"])[0, 1]]
    text = reference_text_features(perturbed_clip, x_embedding.expand(N_CTX, -1), CLASSNAMES)
    prompts = [" ".join(["X"] * N_CTX) + " " + name.replace("_", " ") + "." for name in CLASSNAMES]
    _assert_relative(text, F.normalize(perturbed_clip.encode_text(open_clip.tokenize(prompts)), dim=-1), 1e-5)
    image = reference_image_features(perturbed_clip, images, None)
    _assert_relative(image, F.normalize(perturbed_clip.encode_image(images), dim=-1), 1e-5)


@pytest.mark.parametrize("text_encoding", ["full", "auto", "truncated"])
def test_prompted_clip_matches_reference(perturbed_clip: nn.Module, text_encoding: str) -> None:
    images, labels, txt_ctx, vis_ctx, prototypes = _inputs()
    model = build_prompted(perturbed_clip, CLASSNAMES, text_encoding=text_encoding)
    with torch.no_grad():
        model.text_prompt.txt_ctx.copy_(txt_ctx)
        model.visual_prompt.vis_ctx.copy_(vis_ctx)
    ref_txt_ctx = txt_ctx.clone().requires_grad_(True)
    ref_vis_ctx = vis_ctx.clone().requires_grad_(True)
    expected = reference_losses(perturbed_clip, ref_txt_ctx, ref_vis_ctx, images, labels, prototypes)

    logits, image_features, text_features = model(images)
    terms = dapt_loss(logits, labels, image_features, text_features, prototypes, BETA_V, BETA_T, T)

    _assert_relative(text_features, expected["text"], 1e-5)
    _assert_relative(image_features, expected["image"], 1e-5)
    _assert_relative(logits, expected["logits"], 1e-5)
    for name in ("ce", "intra", "inter"):
        assert getattr(terms, name).item() == pytest.approx(expected[name].item(), rel=1e-5), name
    total = expected["ce"] + BETA_V * expected["intra"] + BETA_T * expected["inter"]
    assert terms.total.item() == pytest.approx(total.item(), rel=1e-5)

    # Gradients of each term separately (a sum could hide two compensating errors), then of the total.
    params = [model.text_prompt.txt_ctx, model.visual_prompt.vis_ctx]
    for name, weight in (("ce", 1.0), ("intra", BETA_V), ("inter", BETA_T), ("total", None)):
        ours = terms.total if weight is None else weight * getattr(terms, name)
        theirs = total if weight is None else weight * expected[name]
        got = torch.autograd.grad(ours, params, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(theirs, [ref_txt_ctx, ref_vis_ctx], retain_graph=True, allow_unused=True)
        for label, g, w in zip(("txt_ctx", "vis_ctx"), got, want, strict=True):
            if w is None:  # intra does not depend on the text context, inter not on the visual one
                assert g is None or g.abs().max().item() == 0, f"{name}/{label}"
                continue
            _assert_relative(g, w, 5e-5)


def test_frozen_clip_gets_no_gradient(perturbed_clip: nn.Module) -> None:
    images, labels, _, _, prototypes = _inputs()
    model = build_prompted(perturbed_clip, CLASSNAMES, text_encoding="auto")
    logits, image_features, text_features = model(images)
    dapt_loss(logits, labels, image_features, text_features, prototypes, BETA_V, BETA_T).total.backward()
    assert all(p.grad is None for p in perturbed_clip.parameters())
    assert model.text_prompt.txt_ctx.grad is not None and model.visual_prompt.vis_ctx.grad is not None
